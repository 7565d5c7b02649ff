package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"etcdimg/internal/etcdtest"
	"etcdimg/internal/spec"
	"etcdimg/pki"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// TestUnreachableMemberIsUnhealthy: a port nobody answers on is reported
// unhealthy with an error, and the table carries the runbook's columns.
// (Healthy members are checked end to end in e2e.)
func TestUnreachableMemberIsUnhealthy(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	rs := Check(context.Background(), []Endpoint{{Member: "etcd-9", URL: "https://" + addr}}, &tls.Config{}, 500*time.Millisecond)
	if len(rs) != 1 || rs[0].Healthy || rs[0].Err == "" || rs[0].Member != "etcd-9" {
		t.Fatalf("results %+v", rs)
	}
	if Healthy(rs) || Healthy(nil) {
		t.Error("Healthy is true without healthy members")
	}
	var b strings.Builder
	Table(&b, rs)
	for _, col := range []string{"ENDPOINT", "HEALTH", "TOOK", "ERROR", "https://" + addr, "false"} {
		if !strings.Contains(b.String(), col) {
			t.Errorf("table lacks %q:\n%s", col, b.String())
		}
	}
}

// TestExpiringNamesTheServedCertificateAndItsCA serves a member
// certificate from a CA that ends in 20 days (pki caps the leaf there)
// and expects a warning for each; with a 10-day window, none.
func TestExpiringNamesTheServedCertificateAndItsCA(t *testing.T) {
	c := spec.Default(1)
	c.PKI.CALifetime = spec.Duration(20 * 24 * time.Hour)
	c.PKI.CertLifetime = c.PKI.CALifetime
	set, err := pki.Ensure(c, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := tls.X509KeyPair(set.Members["etcd-1"].Cert, set.Members["etcd-1"].Key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{serverCert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.(*tls.Conn).Handshake()
			conn.Close()
		}
	}()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(set.CACert)
	tc := &tls.Config{RootCAs: pool}
	eps := []Endpoint{{Member: "etcd-1", URL: "https://" + ln.Addr().String()}}
	w := Expiring(context.Background(), eps, tc, time.Now(), ExpiryWindow)
	if len(w) != 2 || !strings.Contains(w[0], "etcd-1's certificate (CN etcd-1) ends on") || !strings.Contains(w[1], "the CA (CN etcd-ca)") || !strings.Contains(w[1], "in 19 days") {
		t.Errorf("warnings %q", w)
	}
	if w := Expiring(context.Background(), eps, tc, time.Now(), 10*24*time.Hour); len(w) != 0 {
		t.Errorf("10-day window: %q", w)
	}
}

// TestWaitAsksAHealthyMemberOnce: Wait keeps asking a member that does
// not answer, and asks a healthy one (a real etcd, embedded, with the
// cluster's certificates) once: one TLS handshake, however long the
// other member keeps it waiting.
func TestWaitAsksAHealthyMemberOnce(t *testing.T) {
	c := spec.Default(1)
	dir := t.TempDir()
	set, err := pki.Ensure(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ca := write("ca.pem", set.CACert)
	cert, key := write("m.pem", set.Members["etcd-1"].Cert), write("m-key.pem", set.Members["etcd-1"].Key)
	_, u := etcdtest.Start(t, func(cfg *embed.Config) {
		cu := etcdtest.FreeURL(t, "https")
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: cert, KeyFile: key, TrustedCAFile: ca, ClientCertAuth: true}
	})
	tc, err := TLS(ca, write("admin.pem", set.Admin.Cert), write("admin-key.pem", set.Admin.Key))
	if err != nil {
		t.Fatal(err)
	}
	var handshakes atomic.Int32
	tc.VerifyConnection = func(tls.ConnectionState) error { handshakes.Add(1); return nil }

	silent := etcdtest.FreeURL(t, "https")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	rs := Wait(ctx, []Endpoint{{Member: "etcd-1", URL: u}, {Member: "etcd-2", URL: silent.String()}}, tc, 500*time.Millisecond, 50*time.Millisecond)
	if !rs[0].Healthy || rs[1].Healthy || rs[1].Err == "" {
		t.Fatalf("results %+v", rs)
	}
	if n := handshakes.Load(); n != 1 {
		t.Errorf("the healthy member was asked with %d TLS handshakes while the other was awaited, want 1", n)
	}
}
