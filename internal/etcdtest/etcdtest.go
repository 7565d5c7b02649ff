// Package etcdtest runs a real etcd, embedded, for the unit tests of the
// packages that talk to etcd (snapshot, restore, backup, authz): the
// server built from go.mod, on loopback ports of its own.
package etcdtest

import (
	"errors"
	"net"
	"net/url"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// FreeURL is a URL on a loopback port that was free a moment ago.
func FreeURL(t testing.TB, scheme string) url.URL {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return url.URL{Scheme: scheme, Host: l.Addr().String()}
}

// Start runs one member with its data in a temporary directory, plain
// HTTP client and peer URLs on free ports and logs off; tweak, when set,
// changes the config first (a data directory to start from, TLS, a
// name). It waits (bounded) until the member serves, stops it at the
// end of the test, and returns it with its client URL.
func Start(t testing.TB, tweak func(*embed.Config)) (*embed.Etcd, string) {
	t.Helper()
	// A port free a moment ago may be taken by the time etcd binds it
	// (by another package's test, run in parallel): then the member
	// starts again on new ports, a few times.
	for try := 1; ; try++ {
		cfg := embed.NewConfig()
		cfg.Dir = t.TempDir()
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cu, pu := FreeURL(t, "http"), FreeURL(t, "http")
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfg.InitialCluster = cfg.Name + "=" + pu.String()
		if tweak != nil {
			tweak(cfg)
		}
		e, err := embed.StartEtcd(cfg)
		if errors.Is(err, syscall.EADDRINUSE) && try < 5 {
			t.Logf("embedded etcd: %v; again on other ports", err)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		select {
		case <-e.Server.ReadyNotify():
		case <-time.After(30 * time.Second):
			t.Fatal("embedded etcd did not become ready within 30 s")
		}
		return e, cfg.AdvertiseClientUrls[0].String()
	}
}
