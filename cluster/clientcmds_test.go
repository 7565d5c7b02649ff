package cluster

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"

	"etcdimg/internal/authz"
	"etcdimg/internal/etcdtest"
	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// builtEtcd starts a real one-member etcd serving mTLS with the PKI of a
// new output directory, and returns that directory's spec, the directory
// and where its member is reached.
func builtEtcd(t *testing.T) (*spec.Cluster, outdir.Layout, render.Endpoint) {
	t.Helper()
	c := spec.Default(1)
	c.Members[0].IP = "127.0.0.1"
	c.Network.CIDR, c.Network.Gateway = "127.0.0.0/8", ""
	dir := outdir.Layout(t.TempDir())
	set, err := pki.Ensure(c, dir.PKI())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range set.Files() {
		p := filepath.Join(dir.PKI(), f.Name)
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, f.Data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, u := etcdtest.Start(t, func(cfg *embed.Config) {
		cfg.Name = "etcd-1"
		cu := etcdtest.FreeURL(t, "https")
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: dir.PKIFile("etcd-1.pem"), KeyFile: dir.PKIFile("etcd-1-key.pem"), TrustedCAFile: dir.PKIFile(pki.CACertFile), ClientCertAuth: true}
		cfg.InitialCluster = cfg.Name + "=" + cfg.AdvertisePeerUrls[0].String()
	})
	host := strings.TrimPrefix(u, "https://")
	return c, dir, func(spec.Member, int) string { return host }
}

// TestClientCommandsSayWhatTheyDid: client add, list and remove against a
// real etcd, with what each prints: the new client's access and files
// (installed), the overlap warned of, the list, and the pair retired on
// removal.
func TestClientCommandsSayWhatTheyDid(t *testing.T) {
	c, dir, reach := builtEtcd(t)
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	var out, warn strings.Builder
	if err := IssueClient(&out, &warn, c, dir, reach, authz.Client{Name: "app", Prefix: "/app/"}, now); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out.String(), "\n")
	if len(lines) != 5 || lines[0] != "client   app: read-write on /app/ (etcd user and role app; authentication is on)" ||
		!strings.HasPrefix(lines[1], "cert     "+dir.ClientCert("app")+" (client authentication only, until ") ||
		lines[2] != "key      "+dir.ClientKey("app") || lines[3] != "ca       "+dir.PKIFile(pki.CACertFile) {
		t.Errorf("client add said:\n%s", out.String())
	}
	if _, err := os.Stat(dir.ClientKey("app")); err != nil || warn.Len() > 0 {
		t.Errorf("key %v, warnings %q", err, warn.String())
	}
	out.Reset()
	if err := IssueClient(&out, &warn, c, dir, reach, authz.Client{Name: "audit", Prefix: "/app/x/", ReadOnly: true}, now); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "client   audit: read-only on /app/x/ ") ||
		warn.String() != "warning: audit's prefix /app/x/ overlaps client app's /app/: each reaches keys of the other; give each client a prefix of its own unless it is meant (a read-only auditor)\n" {
		t.Errorf("second client add said:\n%s\nand warned:\n%s", out.String(), warn.String())
	}
	e, err := Admin(c, dir, reach)
	if err != nil {
		t.Fatal(err)
	}
	out.Reset()
	warn.Reset()
	if err := e.ListClients(&out, &warn, c.Names()); err != nil {
		t.Fatal(err)
	}
	// authz makes the Kubernetes API server's client on every cluster;
	// it is listed after these, and not warned of: /registry/ is its by
	// design, though refused to the operator's clients.
	want := "authentication on; root (the admin certificate) and the members etcd-1 hold the root role\n" +
		"client   app              read-write /app/\n" +
		"client   audit            read-only  /app/x/\n"
	if !strings.HasPrefix(out.String(), want) || !strings.Contains(out.String(), authz.KubeAPIServer.Name) || warn.Len() > 0 {
		t.Errorf("client list said:\n%s\nwant first\n%s\nwarned %q", out.String(), want, warn.String())
	}
	out.Reset()
	if err := e.DropClient(&out, dir, "app", now); err != nil {
		t.Fatal(err)
	}
	retired := render.RetiredPath(dir, render.Stamp(now))
	want = "client   app removed: its user and role are gone, so its certificate is refused for every key\n" +
		"retired  " + filepath.Join(retired, outdir.ClientsDir, "app.pem") + ", " + filepath.Join(retired, outdir.ClientsDir, "app-key.pem") + "\n"
	if out.String() != want {
		t.Errorf("client remove said:\n%s\nwant\n%s", out.String(), want)
	}
	if _, err := os.Stat(dir.ClientKey("app")); !os.IsNotExist(err) {
		t.Errorf("the removed client's key is still in place: %v", err)
	}
}

// TestClientAddedWarnings: an overlap per client, then the pruned users
// in one line.
func TestClientAddedWarnings(t *testing.T) {
	a := &ClientAdded{Overlaps: []authz.Client{{Name: "a", Prefix: "/a/"}, {Name: "b", Prefix: "/"}}, Pruned: []string{"etcd-4", "etcd-5"}}
	ws := a.Warnings(authz.Client{Name: "new", Prefix: "/a/b/"})
	if len(ws) != 3 || !strings.HasPrefix(ws[0], "warning: new's prefix /a/b/ overlaps client a's /a/: ") || !strings.HasPrefix(ws[1], "warning: new's prefix /a/b/ overlaps client b's /: ") ||
		ws[2] != "removed  the etcd users of etcd-4, etcd-5: members no longer in the spec nor the cluster, whose certificates were still root" {
		t.Errorf("warnings %q", ws)
	}
	if ws := (&ClientAdded{}).Warnings(authz.Client{Name: "new"}); len(ws) != 0 {
		t.Errorf("nothing found, warnings %q", ws)
	}
}
