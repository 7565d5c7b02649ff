package cluster

import (
	"context"
	"crypto/tls"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"

	"etcdimg/cluster/health"
	"etcdimg/internal/authz"
	"etcdimg/internal/etcdtest"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// TestClientCommandsWithTheClusterDownNameTheEndpoints: with no member
// answering, client add says which endpoints it tried and that the
// cluster must be up (it said `authz: user root: context deadline
// exceeded` after 30 s; issue 21).
func TestClientCommandsWithTheClusterDownNameTheEndpoints(t *testing.T) {
	a, b := etcdtest.FreeURL(t, "https"), etcdtest.FreeURL(t, "https")
	e := &Etcd{Endpoints: []health.Endpoint{{Member: "etcd-1", URL: a.String()}, {Member: "etcd-2", URL: b.String()}}, TLS: &tls.Config{}}
	for _, tc := range []struct {
		name string
		do   func() error
	}{
		{"add", func() error {
			_, err := e.AddClient([]string{"etcd-1", "etcd-2"}, authz.Client{Name: "app", Prefix: "/app/"})
			return err
		}},
		{"list", func() error { _, _, err := e.Clients([]string{"etcd-1", "etcd-2"}); return err }},
		{"remove", func() error { return e.RemoveClient("app") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() { done <- tc.do() }()
			var err error
			select {
			case err = <-done:
			case <-time.After(2 * time.Minute):
				t.Fatal("did not return")
			}
			if err == nil {
				t.Fatal("succeeded with no member up")
			}
			for _, want := range []string{a.String(), b.String(), "the cluster must be up"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		})
	}
}

// TestAddClientReportsOverlapsAndRemovedMembers: against a real etcd with
// authentication on, adding a client reports the clients whose prefix
// overlaps its own, and the users of removed members it deleted.
func TestAddClientReportsOverlapsAndRemovedMembers(t *testing.T) {
	c := spec.Default(1)
	c.Members[0].IP = "127.0.0.1"
	c.Network.CIDR, c.Network.Gateway = "127.0.0.0/8", ""
	dir := t.TempDir()
	set, err := pki.Ensure(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range set.Files() {
		p := filepath.Join(dir, f.Name)
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, f.Data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, u := etcdtest.Start(t, func(cfg *embed.Config) {
		cfg.Name = "etcd-1"
		cu := etcdtest.FreeURL(t, "https")
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: filepath.Join(dir, "etcd-1.pem"), KeyFile: filepath.Join(dir, "etcd-1-key.pem"), TrustedCAFile: filepath.Join(dir, pki.CACertFile), ClientCertAuth: true}
		cfg.InitialCluster = cfg.Name + "=" + cfg.AdvertisePeerUrls[0].String()
	})
	tc, err := health.TLS(filepath.Join(dir, pki.CACertFile), filepath.Join(dir, pki.AdminCert), filepath.Join(dir, pki.AdminKey))
	if err != nil {
		t.Fatal(err)
	}
	e := &Etcd{Endpoints: []health.Endpoint{{Member: "etcd-1", URL: u}}, TLS: tc}
	// etcd-2 was a member once: the spec had it, then dropped it.
	if _, err := e.AddClient([]string{"etcd-1", "etcd-2"}, authz.Client{Name: "app", Prefix: "/app/"}); err != nil {
		t.Fatal(err)
	}
	got, err := e.AddClient([]string{"etcd-1"}, authz.Client{Name: "audit", Prefix: "/app/", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Overlaps) != 1 || got.Overlaps[0].Name != "app" || strings.Join(got.Pruned, " ") != "etcd-2" {
		t.Errorf("added %+v; want app's prefix overlapping and etcd-2's user removed", got)
	}
	cli, err := e.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.UserGet(ctx, "etcd-2"); err == nil {
		t.Error("the removed member's user is still there")
	}
}
