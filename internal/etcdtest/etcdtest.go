// Package etcdtest runs a real etcd, embedded, for the unit tests of the
// packages that talk to etcd (snapshot, restore, backup, authz): the
// server built from go.mod, on loopback ports of its own.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
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

// Member is a member of a Cluster: its name and client URL.
type Member struct{ Name, URL string }

// Cluster starts an embedded etcd cluster of n members named etcd-1...
// and returns their names and client URLs: etcd-1 alone, then each
// other one added as a learner, started "existing" and promoted (a
// learner does not count for quorum, so the cluster keeps its leader
// while the new member starts). tweak, when set, changes every member's
// config.
func Cluster(t testing.TB, n int, tweak func(*embed.Config)) []Member {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	first, u := Start(t, func(c *embed.Config) {
		c.Name = "etcd-1"
		c.InitialCluster = "etcd-1=" + c.AdvertisePeerUrls[0].String()
		// A member is added before the last has been up 5 s, which
		// etcd's strict reconfiguration check would refuse.
		c.StrictReconfigCheck = false
		if tweak != nil {
			tweak(c)
		}
	})
	ms := []Member{{"etcd-1", u}}
	urls := func() []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.URL)
		}
		return out
	}
	initial := first.Config().InitialCluster
	for i := 2; i <= n; i++ {
		cli, err := clientv3.New(clientv3.Config{Endpoints: urls(), DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		peer := FreeURL(t, "http")
		added, err := cli.MemberAddAsLearner(ctx, []string{peer.String()})
		if err != nil {
			t.Fatal(err)
		}
		// The new member reads the cluster from any member it is given:
		// each must know of it first.
		for _, u := range urls() {
			for {
				one, err := clientv3.New(clientv3.Config{Endpoints: []string{u}, Logger: zap.NewNop()})
				if err != nil {
					t.Fatal(err)
				}
				l, err := one.MemberList(ctx, clientv3.WithSerializable())
				one.Close()
				if err == nil && len(l.Members) == i {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("%s does not list member %d: %v", u, i, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		name := fmt.Sprintf("etcd-%d", i)
		initial += "," + name + "=" + peer.String()
		_, u := Start(t, func(c *embed.Config) {
			c.Name, c.InitialCluster, c.ClusterState = name, initial, embed.ClusterStateFlagExisting
			c.StrictReconfigCheck = false
			c.ListenPeerUrls, c.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
			if tweak != nil {
				tweak(c)
			}
		})
		for {
			if _, err := cli.MemberPromote(ctx, added.Member.ID); err == nil {
				break
			} else if ctx.Err() != nil {
				t.Fatalf("promote %s: %v", name, err)
			}
			time.Sleep(50 * time.Millisecond) // until it has caught up with the leader
		}
		ms = append(ms, Member{name, u})
	}
	return ms
}
