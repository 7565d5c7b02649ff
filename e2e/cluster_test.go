package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdimg/firstboot"
	"etcdimg/ignition/ign"
	"etcdimg/testvm"
)

// member is one etcd process started from a rendered Ignition config.
type member struct {
	name, ip string
	root     string // the config applied here, as firstboot applies it to /
	env      []string
	log      string
	cmd      *exec.Cmd
	done     chan struct{}
}

// startMember applies the member's rendered config under a private root
// and runs etcd with the environment of the rendered etcd.conf, the way
// the appliance's etcd.service does. Paths in etcd.conf are moved under
// the root; nothing else is changed.
func startMember(t *testing.T, ignPath, name, ip string) *member {
	t.Helper()
	raw, err := os.ReadFile(ignPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ign.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	m := &member{name: name, ip: ip, root: t.TempDir(), done: make(chan struct{})}
	if err := firstboot.Apply(cfg, m.root); err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(filepath.Join(m.root, ign.EtcdConfPath))
	if err != nil {
		t.Fatal(err)
	}
	env, err := ign.ParseEnvFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	for i, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if k == "ETCD_DATA_DIR" || strings.HasSuffix(k, "_FILE") {
			env[i] = k + "=" + filepath.Join(m.root, v)
		}
	}
	var base []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD") {
			base = append(base, kv)
		}
	}
	m.log = filepath.Join(t.TempDir(), name+".log")
	m.env = append(base, env...)
	m.run(t)
	t.Cleanup(func() { m.stop(t) })
	return m
}

// run starts etcd from the member's root and data, again after a stop.
func (m *member) run(t *testing.T) {
	t.Helper()
	logf, err := os.OpenFile(m.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	m.done = make(chan struct{})
	m.cmd = exec.Command(bin.etcd)
	m.cmd.Env = m.env
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := m.done
	go func() { m.cmd.Wait(); logf.Close(); close(done) }()
}

// stop ends the member by its PID: SIGTERM, then SIGKILL after 10 s.
func (m *member) stop(t *testing.T) {
	select {
	case <-m.done:
		return
	default:
	}
	if !stopGroup(m.cmd.Process.Pid, m.done, 10*time.Second) {
		t.Logf("%s (pid %d) ignored SIGTERM; killed it", m.name, m.cmd.Process.Pid)
	}
}

// stopGroup ends the process group a test started (by its leader's PID):
// SIGTERM, then SIGKILL after grace; done closes when the leader has
// exited. It reports whether SIGTERM was enough.
func stopGroup(pid int, done <-chan struct{}, grace time.Duration) bool {
	syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-done:
		return true
	case <-time.After(grace):
		syscall.Kill(-pid, syscall.SIGKILL)
		<-done
		return false
	}
}

func (m *member) tail(n int) string { return testvm.TailFile(m.log, n) }

// checkMembers asserts a member list of n started members whose peer and
// client URLs are https and start with prefix.
func checkMembers(t *testing.T, list *clientv3.MemberListResponse, n int, prefix string) {
	t.Helper()
	if len(list.Members) != n {
		t.Fatalf("member list has %d members, want %d: %v", len(list.Members), n, list.Members)
	}
	for _, m := range list.Members {
		if m.Name == "" || len(m.PeerURLs) != 1 || !strings.HasPrefix(m.PeerURLs[0], prefix) ||
			len(m.ClientURLs) != 1 || !strings.HasPrefix(m.ClientURLs[0], prefix) {
			t.Errorf("member %+v is not a started member with URLs under %s", m, prefix)
		}
	}
}

// waitFor polls check until it returns nil or timeout passes; on timeout
// it fails the test with the last error and every member's log tail.
func waitFor(t *testing.T, timeout time.Duration, what string, check func() error, members ...*member) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = check(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, m := range members {
		t.Logf("--- %s log tail (%s) ---\n%s", m.name, m.log, m.tail(30))
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, err)
}

func health(ip string) error {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://%s:2381/health", ip))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(b), `"health":"true"`) {
		return fmt.Errorf("%s /health: %s", ip, b)
	}
	return nil
}

func tlsConfig(t testing.TB, ca, cert, key string) *tls.Config {
	t.Helper()
	cfg, err := loadTLS(ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// renderLoopback renders, in a new work directory, a three-member spec
// named name whose members etcd-1..3 sit on loopback at ipPrefix+"1".."3"
// (plus the extra spec lines); it returns the work and output
// directories. The spec is work/spec.yaml.
func renderLoopback(t *testing.T, name, ipPrefix, extra string) (work, out string) {
	t.Helper()
	work = t.TempDir()
	specPath := filepath.Join(work, "spec.yaml")
	os.WriteFile(specPath, []byte(fmt.Sprintf(`name: %s
members:
  - {name: etcd-1, ip: %[2]s1}
  - {name: etcd-2, ip: %[2]s2}
  - {name: etcd-3, ip: %[2]s3}
network: {cidr: 127.0.0.0/8}
%s`, name, ipPrefix, extra)), 0o644)
	out = filepath.Join(work, "out")
	if _, stderr, code := etcdimg(t, work, "render", "--config", specPath, "--out", out); code != 0 {
		t.Fatalf("render: %s", stderr)
	}
	return work, out
}

// startLoopback starts the three members renderLoopback rendered into out.
func startLoopback(t *testing.T, out, ipPrefix string) []*member {
	t.Helper()
	var members []*member
	for i, name := range []string{"etcd-1", "etcd-2", "etcd-3"} {
		members = append(members, startMember(t, filepath.Join(out, "ignition", name+".ign"), name, ipPrefix+strconv.Itoa(i+1)))
	}
	return members
}

// TestRenderedConfigsFormAHealthyTLSCluster starts three real etcd members
// (the etcd built from go.mod, as the multi-call binary) from a rendered
// spec whose members sit on loopback, and proves the cluster they form
// takes the admin certificate and refuses every other client.
func TestRenderedConfigsFormAHealthyTLSCluster(t *testing.T) {
	work, out := renderLoopback(t, "loopback-cluster", "127.0.0.5", "")
	specPath := filepath.Join(work, "spec.yaml")
	members := startLoopback(t, out, "127.0.0.5")
	for _, m := range members {
		waitFor(t, 60*time.Second, m.name+" healthy", func() error { return health(m.ip) }, members...)
	}

	pkiDir := filepath.Join(out, "pki")
	admin := tlsConfig(t, filepath.Join(pkiDir, "etcd-ca.pem"), filepath.Join(pkiDir, "admin.pem"), filepath.Join(pkiDir, "admin-key.pem"))
	client := func(ip string, tc *tls.Config) *clientv3.Client {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + ip + ":2379"}, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The admin certificate writes through one member and reads through
	// the others.
	if _, err := client(members[0].ip, admin).Put(ctx, "/etcdimg/hello", "world"); err != nil {
		t.Fatalf("admin put: %v", err)
	}
	for _, m := range members[1:] {
		resp, err := client(m.ip, admin).Get(ctx, "/etcdimg/hello")
		if err != nil {
			t.Fatalf("admin get via %s: %v", m.name, err)
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "world" {
			t.Errorf("get via %s: %v", m.name, resp.Kvs)
		}
	}
	list, err := client(members[2].ip, admin).MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkMembers(t, list, 3, "https://127.0.0.5")

	// A client certificate from another CA, and no certificate at all, are
	// refused on every client port. The same request with the admin
	// certificate succeeds, so the refusals are the certificates' doing.
	foreignOut := filepath.Join(work, "foreign")
	if _, stderr, code := etcdimg(t, work, "render", "--config", specPath, "--out", foreignOut); code != 0 {
		t.Fatal(stderr)
	}
	fp := filepath.Join(foreignOut, "pki")
	foreign := tlsConfig(t, filepath.Join(pkiDir, "etcd-ca.pem"), filepath.Join(fp, "admin.pem"), filepath.Join(fp, "admin-key.pem"))
	noCert := tlsConfig(t, filepath.Join(pkiDir, "etcd-ca.pem"), "", "")
	get := func(ip string, tc *tls.Config) error {
		c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		resp, err := c.Get("https://" + ip + ":2379/version")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	}
	for _, m := range members {
		if err := get(m.ip, admin); err != nil {
			t.Errorf("%s: admin /version: %v", m.name, err)
		}
		for what, tc := range map[string]*tls.Config{"foreign CA": foreign, "no certificate": noCert} {
			err := get(m.ip, tc)
			if err == nil {
				t.Errorf("%s: a client with %s was served", m.name, what)
			} else if !strings.Contains(err.Error(), "certificate") {
				t.Errorf("%s: %s refused for another reason: %v", m.name, what, err)
			}
		}
		short, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := client(m.ip, foreign).Put(short, "/etcdimg/intruder", "x")
		cancel()
		if err == nil {
			t.Errorf("%s: foreign certificate wrote a key", m.name)
		}
	}
	resp, err := client(members[0].ip, admin).Get(ctx, "/etcdimg/intruder")
	if err != nil || len(resp.Kvs) != 0 {
		t.Errorf("intruder key: %v %v", resp, err)
	}

	// The peer port takes members only: a member's certificate is served
	// there, the admin's (from the same CA, full access on 2379) is not.
	memberTLS := tlsConfig(t, filepath.Join(pkiDir, "etcd-ca.pem"), filepath.Join(pkiDir, "etcd-2.pem"), filepath.Join(pkiDir, "etcd-2-key.pem"))
	peerGet := func(ip string, tc *tls.Config) error {
		c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		resp, err := c.Get("https://" + ip + ":2380/version")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	for _, m := range members {
		if err := peerGet(m.ip, memberTLS); err != nil {
			t.Errorf("%s: a member's certificate on the peer port: %v", m.name, err)
		}
		if err := peerGet(m.ip, admin); err == nil {
			t.Errorf("%s: the admin certificate was served on the peer port", m.name)
		}
		// The same, seen by OpenSSL's client.
		ca := []string{"-CAfile", filepath.Join(pkiDir, "etcd-ca.pem")}
		if _, err := sClientRequest(m.ip+":2380", append(ca, "-cert", filepath.Join(pkiDir, "etcd-2.pem"), "-key", filepath.Join(pkiDir, "etcd-2-key.pem"))...); err != nil {
			t.Errorf("%s: openssl with a member's certificate on the peer port: %v", m.name, err)
		}
		if _, err := sClientRequest(m.ip+":2380", append(ca, "-cert", filepath.Join(pkiDir, "admin.pem"), "-key", filepath.Join(pkiDir, "admin-key.pem"))...); err == nil {
			t.Errorf("%s: openssl with the admin certificate was answered on the peer port", m.name)
		}
	}

	// Application clients: `client add` turns authentication on and gives
	// a client-only certificate a role on its prefix and nothing else.
	if stdout, stderr, code := etcdimg(t, work, "client", "add", "app", "--prefix", "/app/", "--out", out); code != 0 || !strings.Contains(stdout, "app: read-write on /app/") {
		t.Fatalf("client add: exit %d: %s%s", code, stdout, stderr)
	}
	// Adding it again gives a new pair and keeps the old one aside.
	firstKey, _ := os.ReadFile(filepath.Join(out, "clients", "app-key.pem"))
	if _, stderr, code := etcdimg(t, work, "client", "add", "app", "--prefix", "/app/", "--out", out); code != 0 {
		t.Fatalf("client add again: %s", stderr)
	}
	kept, _ := filepath.Glob(filepath.Join(out, "retired", "*", "clients", "app-key.pem"))
	if newKey, _ := os.ReadFile(filepath.Join(out, "clients", "app-key.pem")); len(kept) != 1 || bytes.Equal(newKey, firstKey) {
		t.Errorf("client add again: kept %v, key changed %v", kept, !bytes.Equal(newKey, firstKey))
	} else if b, _ := os.ReadFile(kept[0]); !bytes.Equal(b, firstKey) {
		t.Error("the key kept aside is not the first key")
	}
	if _, stderr, code := etcdimg(t, work, "client", "add", "reader", "--prefix", "/app/", "--read-only", "--out", out); code != 0 {
		t.Fatalf("client add --read-only: %s", stderr)
	}
	clientTLS := func(name string) *tls.Config {
		cd := filepath.Join(out, "clients")
		return tlsConfig(t, filepath.Join(pkiDir, "etcd-ca.pem"), filepath.Join(cd, name+".pem"), filepath.Join(cd, name+"-key.pem"))
	}
	app, reader := client(members[0].ip, clientTLS("app")), client(members[1].ip, clientTLS("reader"))
	denied := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("%s: %v, want permission denied", what, err)
		}
	}
	if _, err := app.Put(ctx, "/app/config", "v1"); err != nil {
		t.Errorf("app put in its prefix: %v", err)
	}
	if r, err := reader.Get(ctx, "/app/config"); err != nil || len(r.Kvs) != 1 {
		t.Errorf("reader get in its prefix: %v %v", r, err)
	}
	_, err = reader.Put(ctx, "/app/config", "v2")
	denied("reader put", err)
	_, err = app.Get(ctx, "/etcdimg/hello")
	denied("app get outside its prefix", err)
	_, err = app.Put(ctx, "/etcdimg/hello", "x")
	denied("app put outside its prefix", err)
	_, err = app.MemberAddAsLearner(ctx, []string{"https://127.0.0.99:2380"})
	denied("app adds a member", err)
	if r, err := client(members[2].ip, memberTLS).Get(ctx, "/app/config"); err != nil || len(r.Kvs) != 1 {
		t.Errorf("a member's certificate (root role) reads: %v %v", r, err)
	}
	if err := peerGet(members[0].ip, clientTLS("app")); err == nil {
		t.Error("an application certificate was served on the peer port")
	}
	if stdout, _, code := etcdimg(t, work, "client", "list", "--out", out); code != 0 || !strings.Contains(stdout, "authentication on") ||
		!regexp.MustCompile(`client\s+app\s+read-write\s+/app/`).MatchString(stdout) || !regexp.MustCompile(`client\s+reader\s+read-only\s+/app/`).MatchString(stdout) {
		t.Errorf("client list: %s", stdout)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"app", "--prefix", "/other/"}, `client app exists with prefix "/app/"`},
		{[]string{"etcd-1", "--prefix", "/x/"}, "is a member's name"},
		{[]string{"root", "--prefix", "/x/"}, "is the admin certificate's"},
		{[]string{"kube-apiserver-etcd-client", "--prefix", "/x/"}, "is the Kubernetes API server certificate's"},
		{[]string{"x", "--prefix", "noslash"}, "starting with /"},
	} {
		if _, stderr, code := etcdimg(t, work, append([]string{"client", "add", "--out", out}, tc.args...)...); code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("client add %v: exit %d, %q", tc.args, code, stderr)
		}
	}
	if _, stderr, code := etcdimg(t, work, "client", "remove", "app", "--out", out); code != 0 {
		t.Errorf("client remove: %s", stderr)
	}
	_, err = app.Get(ctx, "/app/config")
	if err == nil {
		t.Error("a removed client still reads")
	}
	if _, err := os.Stat(filepath.Join(out, "clients", "app-key.pem")); err == nil {
		t.Error("the removed client's key is still among the live ones")
	}

	// TLS policy, seen by OpenSSL's client with a member's certificate:
	// on the client and the peer port, an AEAD suite over TLS 1.2 and
	// TLS 1.3 are served; a CBC suite and TLS 1.1 are refused.
	memberCert := []string{"-cert", filepath.Join(pkiDir, "etcd-1.pem"), "-key", filepath.Join(pkiDir, "etcd-1-key.pem"), "-CAfile", filepath.Join(pkiDir, "etcd-ca.pem")}
	for _, m := range members {
		for _, port := range []string{"2379", "2380"} {
			addr := m.ip + ":" + port
			for _, tc := range []struct {
				what  string
				args  []string
				serve bool
			}{
				{"TLS 1.2 AES-GCM", []string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"}, true},
				{"TLS 1.3", []string{"-tls1_3"}, true},
				{"TLS 1.2 AES-CBC-SHA1", []string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"}, false},
				{"TLS 1.2 AES-CBC-SHA256", []string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"}, false},
				{"TLS 1.1", []string{"-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"}, false},
			} {
				out, err := sClient(addr, append(tc.args, memberCert...)...)
				if served := err == nil; served != tc.serve {
					t.Errorf("%s %s: served %v, want %v: %v\n%s", addr, tc.what, served, tc.serve, err, lastLines(out, 8))
				}
			}
		}
	}

	// On a deployment etcdimg does not run (no `up` here), replace says
	// what to do by hand, waits for the member to go down, and then for
	// it to come back a healthy voter: here the operator's part is played
	// by stopping etcd-2 and starting it again on its own data.
	repl := exec.Command(bin.etcdimg, "replace", "etcd-2", "--keep-disk", "--out", out, "--timeout", "2m")
	repl.Dir = work
	stdout, err := repl.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	repl.Stderr = &stderr
	if err := repl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { repl.Process.Kill() })
	sc := bufio.NewScanner(stdout)
	var said strings.Builder
	for sc.Scan() {
		said.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "waiting for etcd-2 to rejoin") {
			break
		}
	}
	if !strings.Contains(said.String(), "now, by hand: power off the machine of etcd-2 (127.0.0.52)") || !strings.Contains(said.String(), "reattach its current data volume") {
		t.Fatalf("replace on a real deployment said:\n%s%s", said.String(), stderr.String())
	}
	members[1].stop(t)
	for sc.Scan() {
		said.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "etcd-2: down") {
			break
		}
	}
	members[1].run(t)
	copied := make(chan struct{})
	go func() { io.Copy(&said, stdout); close(copied) }()
	<-copied
	if err := repl.Wait(); err != nil {
		t.Fatalf("replace on a real deployment: %v\n%s%s", err, said.String(), stderr.String())
	}
	if !strings.Contains(said.String(), "etcd-2 is a voter again and caught up: same member ID") {
		t.Errorf("replace on a real deployment said:\n%s", said.String())
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	list, err = client(members[0].ip, admin).MemberList(ctx2)
	if err != nil {
		t.Fatal(err)
	}
	checkMembers(t, list, 3, "https://127.0.0.5")
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("test ran out of time")
	}
}

// sClient runs `openssl s_client` against addr and returns its output;
// the error is set when no TLS session was established.
func sClient(addr string, args ...string) (string, error) {
	cmd := exec.Command("openssl", append([]string{"s_client", "-connect", addr, "-verify_return_error", "-brief"}, args...)...)
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), err
	}
	if !strings.Contains(string(out), "CONNECTION ESTABLISHED") {
		return string(out), errors.New("no session")
	}
	return string(out), nil
}

// sClientRequest sends GET /version over `openssl s_client` to addr and
// returns what came back; the error is set unless an HTTP response did.
// (Under TLS 1.3 the client's handshake ends before the server has
// checked its certificate: a refused client sees the session established
// and then an alert, never a response.) It stops at the response's first
// line, as servers may keep the connection open for a while.
func sClientRequest(addr string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", append([]string{"s_client", "-connect", addr, "-verify_return_error", "-quiet"}, args...)...)
	cmd.Stdin = strings.NewReader("GET /version HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return "", err
	}
	go func() { cmd.Wait(); pw.Close() }()
	var out strings.Builder
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if strings.HasPrefix(sc.Text(), "HTTP/1.") {
			cancel()
			go io.Copy(io.Discard, pr)
			return out.String(), nil
		}
	}
	return out.String(), fmt.Errorf("no HTTP response: %s", lastLines(out.String(), 3))
}

func mustRead(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
