package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdimg/internal/authz"
	"etcdimg/testvm"
)

// kubeTool finds kube-apiserver or kubeadm-check, which `make
// test-tools` builds into .cache/bin from e2e/tools/kubernetes.
func kubeTool(t *testing.T, name string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(file), "..", ".cache", "bin", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is missing (%v): run `make test-tools`, which builds it into .cache/bin", name, err)
	}
	return p
}

// TestKubernetesAndPrometheusUseTheClusterWithTheirOwnCertificates renders
// a loopback cluster with metrics.tls on, starts its three members, turns
// authentication on as each appliance does at start, and then:
//   - runs a real kube-apiserver (v1.34.2) with exactly the endpoints,
//     files and API server arguments of kubernetes/kubeadm-etcd.yaml; it
//     becomes ready, creates a namespace whose object lands under
//     /registry/, and logs no permission error; its certificate cannot
//     read a key outside /registry/;
//   - scrapes the members' metrics over mTLS: a real Prometheus with the
//     rendered prometheus.yml finds every member up; a plain-HTTP or
//     certificate-less scrape is refused, and the scraper's certificate
//     reads no key.
func TestKubernetesAndPrometheusUseTheClusterWithTheirOwnCertificates(t *testing.T) {
	_, out := renderLoopback(t, "kube-etcd", "127.0.0.6", "metrics: {tls: true}\n")
	pkiDir, kubeDir := filepath.Join(out, "pki"), filepath.Join(out, "kubernetes")
	ca := filepath.Join(pkiDir, "etcd-ca.pem")
	scraper := tlsConfig(t, ca, filepath.Join(pkiDir, "prometheus.pem"), filepath.Join(pkiDir, "prometheus-key.pem"))
	metrics := func(ip, path string, tc *tls.Config) error {
		scheme := "https"
		if tc == nil {
			scheme = "http"
		}
		c := http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		resp, err := c.Get(scheme + "://" + ip + ":2381" + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, lastLines(string(b), 2))
		}
		if path == "/health" && !strings.Contains(string(b), `"health":"true"`) {
			return fmt.Errorf("/health: %s", b)
		}
		return nil
	}
	members := startLoopback(t, out, "127.0.0.6")
	for _, m := range members {
		waitFor(t, 60*time.Second, m.name+" healthy (over mTLS)", func() error { return metrics(m.ip, "/health", scraper) }, members...)
	}

	// Metrics over mTLS only: plain HTTP and a client without a
	// certificate are refused on every member.
	for _, m := range members {
		if err := metrics(m.ip, "/metrics", nil); err == nil {
			t.Errorf("%s: metrics served over plain HTTP with metrics.tls on", m.name)
		}
		if err := metrics(m.ip, "/metrics", tlsConfig(t, ca, "", "")); err == nil {
			t.Errorf("%s: metrics served to a client without a certificate", m.name)
		}
	}

	// Authentication on, as firstboot turns it on in every appliance.
	admin := tlsConfig(t, ca, filepath.Join(pkiDir, "admin.pem"), filepath.Join(pkiDir, "admin-key.pem"))
	client := func(tc *tls.Config) *clientv3.Client {
		var eps []string
		for _, m := range members {
			eps = append(eps, "https://"+m.ip+":2379")
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: eps, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root := client(admin)
	if _, err := authz.Ensure(ctx, root, []string{"etcd-1", "etcd-2", "etcd-3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Put(ctx, "/app/secret", "s3cr3t"); err != nil {
		t.Fatal(err)
	}
	denied := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("%s: %v, want permission denied", what, err)
		}
	}
	_, err := client(scraper).Get(ctx, "/app/secret")
	denied("the scraper's certificate reading a key", err)

	// A real Prometheus with the rendered prometheus.yml scrapes every
	// member's etcd metrics over mTLS.
	query, _, promDir, stopProm := startPrometheus(t, filepath.Join(out, "prometheus.yml"))
	defer stopProm()

	// The API server, configured from kubeadm-etcd.yaml as kubeadm's own
	// loader reads it (strict decoding, defaults, validation).
	check := exec.Command(kubeTool(t, "kubeadm-check"), filepath.Join(kubeDir, "kubeadm-etcd.yaml"))
	checked, err := check.CombinedOutput()
	if err != nil {
		t.Fatalf("kubeadm's loader refuses kubeadm-etcd.yaml: %v\n%s", err, checked)
	}
	var endpoints, extraArgs []string
	for _, line := range strings.Split(strings.TrimSpace(string(checked)), "\n") {
		k, v, _ := strings.Cut(line, " ")
		switch k {
		case "endpoint":
			endpoints = append(endpoints, v)
		case "apiServer.extraArgs":
			extraArgs = append(extraArgs, "--"+v)
		case "caFile", "certFile", "keyFile":
			if !strings.HasPrefix(v, "/etc/kubernetes/pki/") {
				t.Errorf("kubeadm reads %s %s, not under /etc/kubernetes/pki/", k, v)
			}
		}
	}
	if len(endpoints) != 3 {
		t.Fatalf("kubeadm reads endpoints %v from kubeadm-etcd.yaml:\n%s", endpoints, checked)
	}
	kdir := t.TempDir()
	saKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(saKey)
	os.WriteFile(filepath.Join(kdir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	pub, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	os.WriteFile(filepath.Join(kdir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
	token := "etcdimg-e2e-token"
	os.WriteFile(filepath.Join(kdir, "tokens.csv"), []byte(token+",admin,admin,system:masters\n"), 0o600)
	port, err := testvm.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--etcd-servers=" + strings.Join(endpoints, ","),
		"--etcd-cafile=" + filepath.Join(kubeDir, "etcd-ca.pem"),
		"--etcd-certfile=" + filepath.Join(kubeDir, "apiserver-etcd-client.pem"),
		"--etcd-keyfile=" + filepath.Join(kubeDir, "apiserver-etcd-client-key.pem"),
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(port),
		"--advertise-address=192.0.2.10", "--cert-dir=" + filepath.Join(kdir, "certs"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + filepath.Join(kdir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(kdir, "sa.key"),
		"--token-auth-file=" + filepath.Join(kdir, "tokens.csv"),
		"--authorization-mode=RBAC", "--service-cluster-ip-range=10.96.0.0/24",
	}
	args = append(args, extraArgs...)
	logPath := filepath.Join(kdir, "kube-apiserver.log")
	logf, _ := os.Create(logPath)
	cmd := exec.Command(kubeTool(t, "kube-apiserver"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	defer stopGroup(cmd.Process.Pid, done, 15*time.Second)
	api := func(method, path, body string) (int, string, error) {
		req, _ := http.NewRequest(method, fmt.Sprintf("https://127.0.0.1:%d%s", port, path), strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		// The API server's own self-signed serving certificate: the
		// test trusts whatever it made in its cert-dir.
		c := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	kubeLog := func() string { return testvm.TailFile(logPath, 30) }
	deadline := time.Now().Add(4 * time.Minute)
	for {
		code, body, err := api("GET", "/readyz", "")
		if code == http.StatusOK {
			break
		}
		select {
		case <-done:
			t.Fatalf("kube-apiserver exited:\n%s", kubeLog())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-apiserver not ready within 4m: %d %v %s\n%s", code, err, lastLines(body, 10), kubeLog())
		}
		time.Sleep(time.Second)
	}
	code, body, err := api("POST", "/api/v1/namespaces", `{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"etcdimg-e2e"}}`)
	if err != nil || code != http.StatusCreated {
		t.Fatalf("create namespace: %d %v %s\n%s", code, err, body, kubeLog())
	}
	if code, body, err := api("GET", "/api/v1/namespaces/etcdimg-e2e", ""); err != nil || code != http.StatusOK {
		t.Errorf("get namespace: %d %v %s", code, err, body)
	}
	r, err := root.Get(ctx, "/registry/namespaces/etcdimg-e2e")
	if err != nil || len(r.Kvs) != 1 || !bytes.Contains(r.Kvs[0].Value, []byte("etcdimg-e2e")) {
		t.Errorf("the namespace is not under /registry/ in etcd: %v %v", r, err)
	}
	r, err = root.Get(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || r.Count < 20 {
		t.Errorf("keys under /registry/: %v %v", r, err)
	} else {
		t.Logf("kube-apiserver ready; %d keys under /registry/", r.Count)
	}
	kube := client(tlsConfig(t, filepath.Join(kubeDir, "etcd-ca.pem"), filepath.Join(kubeDir, "apiserver-etcd-client.pem"), filepath.Join(kubeDir, "apiserver-etcd-client-key.pem")))
	_, err = kube.Get(ctx, "/app/secret")
	denied("the API server's certificate reading outside /registry/", err)
	_, err = kube.Put(ctx, "/etcdimg/x", "y")
	denied("the API server's certificate writing outside /registry/", err)
	if b, _ := os.ReadFile(logPath); bytes.Contains(b, []byte("permission denied")) {
		t.Errorf("kube-apiserver hit a permission its role lacks:\n%s", lastLines(grepLines(string(b), "permission denied"), 5))
	}

	// By now Prometheus has scraped: every member is up over mTLS.
	deadline = time.Now().Add(time.Minute)
	for {
		up, err := query(`up{job="etcd"}`)
		if err == nil && up["etcd-1"] == "1" && up["etcd-2"] == "1" && up["etcd-3"] == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus over mTLS: up=%v %v\n%s", up, err, testvm.TailFile(filepath.Join(promDir, "prometheus.log"), 15))
		}
		time.Sleep(time.Second)
	}
}
