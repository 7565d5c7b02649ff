package slots

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"etcdimg/internal/layout"
	"etcdimg/internal/slot"
)

// testCA issues certificates as render does: one CA, leaves by CN.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "etcd-ca", Organization: []string{"etcdimg"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

var serial atomic.Int64

func (ca *testCA) leaf(t testing.TB, cn string, usage ...x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if usage == nil {
		usage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(100 + serial.Add(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage,
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{cn},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

type apiFixture struct {
	*fixture
	api     *API
	srv     *httptest.Server
	ca      *testCA
	reboots atomic.Int32
	logs    []string
	logMu   sync.Mutex
}

func newAPIFixture(t *testing.T, run slot.Entry) *apiFixture {
	a := &apiFixture{fixture: newFixture(t, run), ca: newCA(t)}
	a.api = &API{
		ESP: a.esp(), Want: testWant, Tries: 3,
		Allowed: []string{layout.AdminCN, "etcd-1", "etcd-2", "etcd-3"},
		Reboot:  func(string) { a.reboots.Add(1) },
		Waiting: func() string { return "good for 1s of 30s" },
		Log: func(format string, args ...any) {
			a.logMu.Lock()
			a.logs = append(a.logs, format)
			a.logMu.Unlock()
		},
	}
	a.srv = httptest.NewUnstartedServer(a.api)
	// As firstboot's serveNodeAPI: the member's certificate, the CA's
	// clients only (ign.MemberTLS).
	a.srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{a.ca.leaf(t, "etcd-1")},
		ClientCAs:    a.ca.pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
	}
	a.srv.StartTLS()
	t.Cleanup(a.srv.Close)
	return a
}

func (a *apiFixture) client(cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: a.ca.pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// do returns the HTTP status, or 0 when TLS refused the connection.
func (a *apiFixture) do(t *testing.T, c *http.Client, method, path string, body io.Reader) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, a.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAPIServesTheAdminAndTheMembersOnly(t *testing.T) {
	a := newAPIFixture(t, slot.Entry{Gen: 1})
	other := newCA(t)
	rootCert := a.ca.leaf(t, layout.AdminCN)
	memberCert := a.ca.leaf(t, "etcd-2")
	clients := map[string]*http.Client{
		"admin":             a.client(&rootCert),
		"member":            a.client(&memberCert),
		"application":       a.client(ptr(a.ca.leaf(t, "app1"))),
		"prometheus":        a.client(ptr(a.ca.leaf(t, "prometheus"))),
		"kube-apiserver":    a.client(ptr(a.ca.leaf(t, layout.KubeAPIServerCN))),
		"member-lookalike":  a.client(ptr(a.ca.leaf(t, "ETCD-1"))),
		"root of other CA":  a.client(ptr(other.leaf(t, layout.AdminCN))),
		"no certificate":    a.client(nil),
		"root, server-only": a.client(ptr(a.ca.leaf(t, layout.AdminCN, x509.ExtKeyUsageServerAuth))),
	}
	// What each may do: GET status, PUT an update, POST a reboot. 0 is a
	// TLS refusal; -1 is "403 or a TLS refusal".
	want := map[string][3]int{
		"admin":             {200, 200, 202},
		"member":            {200, 403, 403},
		"application":       {403, 403, 403},
		"prometheus":        {403, 403, 403},
		"kube-apiserver":    {403, 403, 403},
		"member-lookalike":  {403, 403, 403},
		"root of other CA":  {-1, -1, -1},
		"no certificate":    {-1, -1, -1},
		"root, server-only": {-1, -1, -1},
	}
	bundle := raw(t, a.bundle("2222222222222222", testCluster, testMember, "next"))
	// The refused first, the admin last: its update stages the slot.
	for _, who := range []string{"member", "application", "prometheus", "kube-apiserver", "member-lookalike", "root of other CA", "no certificate", "root, server-only", "admin"} {
		c := clients[who]
		w := want[who]
		before := tree(t, a.root)
		rebootsBefore := a.reboots.Load()
		for i, req := range []struct {
			method, path string
			body         []byte
		}{
			{http.MethodGet, slot.APIStatus, nil},
			{http.MethodPut, slot.APIUpdate, bundle},
			{http.MethodPost, slot.APIReboot, nil},
		} {
			var body io.Reader
			if req.body != nil {
				body = bytes.NewReader(req.body)
			}
			code, msg := a.do(t, c, req.method, req.path, body)
			ok := code == w[i] || (w[i] == -1 && (code == 0 || code == http.StatusForbidden))
			if !ok {
				t.Errorf("%s: %s %s: %d %s, want %d", who, req.method, req.path, code, strings.TrimSpace(msg), w[i])
			}
			if who == "admin" && i == 0 {
				var st slot.Status
				if err := json.Unmarshal([]byte(msg), &st); err != nil || st.Running.ID != runID || st.Member != testMember {
					t.Errorf("admin's status: %v %s", err, msg)
				}
			}
		}
		if who == "admin" {
			if n := a.reboots.Load() - rebootsBefore; n != 1 {
				t.Errorf("admin's reboot: Reboot called %d times", n)
			}
			st, _ := a.esp().Status()
			if st.Other == nil || st.Other.State != slot.StateStaged {
				t.Errorf("admin's update: %+v", st.Other)
			}
			continue
		}
		if n := a.reboots.Load() - rebootsBefore; n != 0 {
			t.Errorf("%s: Reboot called %d times for a refused request", who, n)
		}
		if !mapsEqual(before, tree(t, a.root)) {
			t.Errorf("%s: a refused request changed the ESP", who)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestAPIOtherMethodsAndPaths(t *testing.T) {
	a := newAPIFixture(t, slot.Entry{Gen: 1})
	c := a.client(ptr(a.ca.leaf(t, layout.AdminCN)))
	for _, r := range []struct{ method, path string }{
		{http.MethodPost, slot.APIStatus}, {http.MethodDelete, slot.APIUpdate}, {http.MethodGet, slot.APIReboot},
		{http.MethodPut, slot.APIStatus}, {http.MethodGet, "/v1/slots/../reboot"}, {http.MethodGet, "/"},
	} {
		if code, _ := a.do(t, c, r.method, r.path, nil); code == 200 || code == 202 {
			t.Errorf("%s %s: %d", r.method, r.path, code)
		}
	}
	if n := a.reboots.Load(); n != 0 {
		t.Errorf("Reboot called %d times", n)
	}
}

func TestAPIUpdateStates(t *testing.T) {
	t.Run("the running slot", func(t *testing.T) {
		a := newAPIFixture(t, slot.Entry{Gen: 1})
		c := a.client(ptr(a.ca.leaf(t, layout.AdminCN)))
		code, msg := a.do(t, c, http.MethodPut, slot.APIUpdate, bytes.NewReader(raw(t, a.bundle(runID, testCluster, testMember, "running"))))
		if code != 200 || !strings.Contains(msg, `"running"`) {
			t.Fatalf("%d %s", code, msg)
		}
	})
	t.Run("on trial", func(t *testing.T) {
		a := newAPIFixture(t, slot.Entry{Gen: 2, Counting: true, TriesLeft: 2, TriesDone: 1})
		c := a.client(ptr(a.ca.leaf(t, layout.AdminCN)))
		before := tree(t, a.root)
		code, msg := a.do(t, c, http.MethodPut, slot.APIUpdate, bytes.NewReader(raw(t, a.bundle("2222222222222222", testCluster, testMember, "n"))))
		if code != http.StatusUnprocessableEntity || !mapsEqual(before, tree(t, a.root)) {
			t.Fatalf("%d %s", code, msg)
		}
		code, msg = a.do(t, c, http.MethodGet, slot.APIStatus, nil)
		if code != 200 || !strings.Contains(msg, "good for 1s of 30s") {
			t.Fatalf("status on trial: %d %s", code, msg)
		}
	})
	t.Run("tampered", func(t *testing.T) {
		a := newAPIFixture(t, slot.Entry{Gen: 1})
		c := a.client(ptr(a.ca.leaf(t, layout.AdminCN)))
		b := raw(t, a.bundle("2222222222222222", testCluster, testMember, "n"))
		b[len(b)-2000] ^= 0xff
		code, msg := a.do(t, c, http.MethodPut, slot.APIUpdate, bytes.NewReader(b))
		if code != http.StatusUnprocessableEntity {
			t.Fatalf("%d %s", code, msg)
		}
		if got := efiEntries(t, a.root); len(got) != 1 {
			t.Fatalf("entries %v", got)
		}
	})
	t.Run("an endless garbage body", func(t *testing.T) {
		a := newAPIFixture(t, slot.Entry{Gen: 1})
		c := a.client(ptr(a.ca.leaf(t, layout.AdminCN)))
		// A body that never ends: the node must stop reading it.
		body := io.LimitReader(zeroReader{}, MaxSlot+8<<20)
		code, _ := a.do(t, c, http.MethodPut, slot.APIUpdate, body)
		if code == 200 {
			t.Fatal("installed")
		}
		if got := efiEntries(t, a.root); len(got) != 1 {
			t.Fatalf("entries %v", got)
		}
	})
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// Two updates at once: the second is refused while the first is being
// written, and the first completes.
func TestAPIOneUpdateAtATime(t *testing.T) {
	a := newAPIFixture(t, slot.Entry{Gen: 1})
	b := raw(t, a.bundle("2222222222222222", testCluster, testMember, "first"))
	pr, pw := io.Pipe()
	first := make(chan int, 1)
	go func() {
		code, _ := a.do(t, a.client(ptr(a.ca.leaf(t, layout.AdminCN))), http.MethodPut, slot.APIUpdate, pr)
		first <- code
	}()
	half := len(b) / 2
	if _, err := pw.Write(b[:half]); err != nil {
		t.Fatal(err)
	}
	// The first has its lock once its bytes are being read.
	time.Sleep(300 * time.Millisecond)
	code, msg := a.do(t, a.client(ptr(a.ca.leaf(t, layout.AdminCN))), http.MethodPut, slot.APIUpdate, bytes.NewReader(raw(t, a.bundle("3333333333333333", testCluster, testMember, "second"))))
	if code != http.StatusConflict {
		t.Errorf("a second update while the first is written: %d %s", code, msg)
	}
	pw.Write(b[half:])
	pw.Close()
	select {
	case code := <-first:
		if code != 200 {
			t.Fatalf("the first update: %d", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the first update did not finish")
	}
	st, _ := a.esp().Status()
	if st.Other == nil || st.Other.ID != "2222222222222222" {
		t.Fatalf("staged %+v", st.Other)
	}
}

// TestAPIStatusSaysWhyEtcdStopped: what PID 1 says of an etcd stopped for
// good reaches the status an operator's `etcdimg status` reads.
func TestAPIStatusSaysWhyEtcdStopped(t *testing.T) {
	a := newAPIFixture(t, slot.Entry{Gen: 1})
	why := ""
	a.api.Stopped = func() string { return why }
	root := a.ca.leaf(t, layout.AdminCN)
	c := a.client(&root)
	for _, want := range []string{"", "etcd stopped for good: its data is damaged"} {
		why = want
		code, body := a.do(t, c, http.MethodGet, slot.APIStatus, nil)
		var st slot.Status
		if code != 200 || json.Unmarshal([]byte(body), &st) != nil || st.Stopped != want {
			t.Errorf("status with %q: %d %s", want, code, body)
		}
	}
}
