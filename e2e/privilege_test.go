package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"etcdimg/internal/backup"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// checkLeastPrivilege is docs/backups.md's and docs/pki.md's least privilege on a cluster under
// up: the backup API (every backup holds the whole keyspace) lists and
// serves backups to the admin (root) and the members only; an
// application client's, the scraper's and the Kubernetes API server's
// certificates, all signed by the cluster's CA, get 403. A client whose
// prefix would cover the product's own keys or the API server's is
// refused, and nothing is written.
func checkLeastPrivilege(t *testing.T, u *upCluster) {
	t.Helper()
	if _, stderr, code := etcdimg(t, u.work, "client", "add", "app", "--prefix", "/app/", "--out", u.out); code != 0 {
		t.Fatalf("client add app: %s", stderr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	users, err := u.client(t, 0, u.admin).UserList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	clients := tree(t, filepath.Join(u.out, "clients"))
	for _, prefix := range []string{"/", "/etcdimg/", "/registry/", "/etc"} {
		_, stderr, code := etcdimg(t, u.work, "client", "add", "greedy", "--prefix", prefix, "--out", u.out)
		if code != 1 || strings.Count(strings.TrimSpace(stderr), "\n") > 0 || !strings.Contains(stderr, "--prefix") {
			t.Errorf("client add --prefix %s: exit %d, %q; want exit 1 and one line naming --prefix", prefix, code, stderr)
		}
	}
	if after := tree(t, filepath.Join(u.out, "clients")); fmt.Sprint(after) != fmt.Sprint(clients) {
		t.Errorf("a refused client add wrote into clients/: %v", after)
	}
	if after, err := u.client(t, 0, u.admin).UserList(ctx); err != nil || fmt.Sprint(after.Users) != fmt.Sprint(users.Users) {
		t.Errorf("a refused client add changed etcd's users: %v → %v (%v)", users.Users, after.Users, err)
	}

	// The scraper's certificate (CN prometheus) as metrics.tls issues it,
	// from the same CA, in a copy of the PKI.
	scraperPKI := t.TempDir()
	for _, f := range []string{pki.CACertFile, pki.CAKeyFile} {
		b, err := os.ReadFile(filepath.Join(u.out, "pki", f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(scraperPKI, f), b, 0o600)
	}
	c, err := spec.Parse([]byte(mustRead(t, filepath.Join(u.out, "etcdimg.yaml"))), "etcdimg.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c.Metrics.TLS = true
	set, err := pki.Ensure(c, scraperPKI)
	if err != nil {
		t.Fatal(err)
	}
	if set.Prometheus == nil {
		t.Fatal("pki issued no scraper certificate with metrics.tls")
	}
	os.WriteFile(filepath.Join(scraperPKI, pki.PrometheusCert), set.Prometheus.Cert, 0o644)
	os.WriteFile(filepath.Join(scraperPKI, pki.PrometheusKey), set.Prometheus.Key, 0o600)
	ca := filepath.Join(u.out, "pki", pki.CACertFile)
	for _, tc := range []struct {
		what string
		cfg  *tls.Config
		want int
	}{
		{"the admin (root)", u.admin, http.StatusOK},
		{"a member", tlsConfig(t, ca, filepath.Join(u.out, "pki", "etcd-2.pem"), filepath.Join(u.out, "pki", "etcd-2-key.pem")), http.StatusOK},
		{"an application client", tlsConfig(t, ca, filepath.Join(u.out, "clients", "app.pem"), filepath.Join(u.out, "clients", "app-key.pem")), http.StatusForbidden},
		{"the scraper", tlsConfig(t, ca, filepath.Join(scraperPKI, pki.PrometheusCert), filepath.Join(scraperPKI, pki.PrometheusKey)), http.StatusForbidden},
		{"the Kubernetes API server", tlsConfig(t, ca, filepath.Join(u.out, "kubernetes", "apiserver-etcd-client.pem"), filepath.Join(u.out, "kubernetes", "apiserver-etcd-client-key.pem")), http.StatusForbidden},
	} {
		hc := http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: tc.cfg}}
		for _, m := range u.state.Members {
			resp, err := hc.Get(fmt.Sprintf("https://127.0.0.1:%d%s", m.Backup, backup.APIPrefix))
			if err != nil {
				t.Errorf("%s: backup API with %s: %v", m.Name, tc.what, err)
				continue
			}
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%s: backup API with %s: HTTP %d, want %d: %.200s", m.Name, tc.what, resp.StatusCode, tc.want, body)
			}
		}
	}
}
