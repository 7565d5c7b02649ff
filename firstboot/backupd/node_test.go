package backupd

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"etcdimg/ignition/ign"
	"etcdimg/internal/backup"
	"etcdimg/internal/layout"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// TestBackupAPITakesTheAdminAndMembersOnly: over a real mTLS listener
// with the cluster's real certificates, the admin's and the members'
// may list and fetch backups; an application client's (one still in the
// spec or one removed from it), the scraper's and the Kubernetes API
// server's get 403, though the CA signed them all.
func TestBackupAPITakesTheAdminAndMembersOnly(t *testing.T) {
	c := spec.Default(3)
	c.Metrics.TLS = true
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	pkiDir := filepath.Join(t.TempDir(), "pki")
	set, err := pki.Ensure(c, pkiDir)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(pkiDir, "..", "kubernetes"), 0o700)
	os.MkdirAll(pkiDir, 0o700)
	for _, f := range set.Files() {
		if err := os.WriteFile(filepath.Join(pkiDir, f.Name), f.Data, f.Mode); err != nil {
			t.Fatal(err)
		}
	}
	app, err := pki.IssueClient(c, pkiDir, "app")
	if err != nil {
		t.Fatal(err)
	}
	removed, err := pki.IssueClient(c, pkiDir, "billing") // since taken out of the spec
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	backup.WriteManifest(dir, backup.Manifest{Name: "b1", Time: time.Now(), Size: 1})
	os.WriteFile(filepath.Join(dir, "b1.db"), []byte("x"), 0o600)

	pair := func(p pki.Pair) tls.Certificate {
		cert, err := tls.X509KeyPair(p.Cert, p.Key)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(set.CACert)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := &tls.Config{Certificates: []tls.Certificate{pair(set.Members["etcd-1"])}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	srv := &http.Server{Handler: APIHandler(dir, Readers(c.Names())...), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(tls.NewListener(ln, server))
	t.Cleanup(func() { srv.Close() })

	for _, tc := range []struct {
		who  string
		cert pki.Pair
		want int
	}{
		{"the admin (root)", set.Admin, http.StatusOK},
		{"a member", set.Members["etcd-2"], http.StatusOK},
		{"an application client", app, http.StatusForbidden},
		{"a removed client", removed, http.StatusForbidden},
		{"the scraper", *set.Prometheus, http.StatusForbidden},
		{"the Kubernetes API server", set.Kube, http.StatusForbidden},
	} {
		t.Run(tc.who, func(t *testing.T) {
			cli := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair(tc.cert)}, ServerName: "127.0.0.1"}}}
			for _, path := range []string{backup.APIPrefix, backup.APIPrefix + "b1"} {
				resp, err := cli.Get("https://" + ln.Addr().String() + path)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.want {
					t.Errorf("GET %s: HTTP %d, want %d (%q)", path, resp.StatusCode, tc.want, body)
				}
			}
		})
	}
}

// TestReadersAreRootAndTheMembers: the backups API's readers come from
// etcd.conf: root and the names the peer port allows (else the initial
// cluster's).
func TestReadersAreRootAndTheMembers(t *testing.T) {
	const base = "ETCD_NAME=etcd-1\nETCD_INITIAL_CLUSTER_TOKEN=t\nETCD_INITIAL_ADVERTISE_PEER_URLS=https://10.0.0.1:2380\n"
	for _, tc := range []struct {
		name string
		conf string
		want string
	}{
		{"peer CNs", base + "ETCD_PEER_CERT_ALLOWED_CN=etcd-1,etcd-2,etcd-3\nETCD_INITIAL_CLUSTER=etcd-1=https://10.0.0.1:2380\n", "root,etcd-1,etcd-2,etcd-3"},
		{"initial cluster", base + "ETCD_INITIAL_CLUSTER=etcd-1=https://10.0.0.1:2380,etcd-2=https://10.0.0.2:2380\n", "root,etcd-1,etcd-2"},
		{"nothing", base, "root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			os.MkdirAll(filepath.Join(root, filepath.Dir(ign.EtcdConfPath)), 0o755)
			if err := os.WriteFile(filepath.Join(root, ign.EtcdConfPath), []byte(tc.conf), 0o600); err != nil {
				t.Fatal(err)
			}
			me, err := ign.ReadMember(root)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(Readers(me.Names), ","); got != tc.want {
				t.Errorf("readers %q, want %q", got, tc.want)
			}
		})
	}
	if layout.AdminCN != pki.AdminCN {
		t.Errorf("layout.AdminCN %q, the admin certificate's CN is %q", layout.AdminCN, pki.AdminCN)
	}
}
