package join

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"etcdimg/ignition/ign"
	"etcdimg/internal/etcdtest"
)

func TestInitialCheckNeedsAQuorumOfPeers(t *testing.T) {
	for _, tc := range []struct {
		serving, size int
		want          bool
	}{
		{0, 3, false}, {1, 3, false}, {2, 3, true},
		{2, 5, false}, {3, 5, true}, {4, 5, true},
		{1, 2, false}, {2, 4, false}, {3, 4, true},
	} {
		if got, why := initialCheck(tc.serving, tc.size); got != tc.want || why == "" {
			t.Errorf("initialCheck(%d serving of %d): %v %q, want %v", tc.serving, tc.size, got, why, tc.want)
		}
	}
}

// damagedCluster runs three members of the etcd built from go.mod with
// the gates etcdimg gives them, writes, stops the third, and flips one
// byte of a value in its database (bbolt's structure left intact: only a
// comparison finds it). restart starts the third again, with the initial
// check or without; cli talks to the other two.
func damagedCluster(t *testing.T) (restart func(initialCheck bool) error, cli *clientv3.Client, id uint64) {
	const n = 3
	type node struct {
		cfg  *embed.Config
		e    *embed.Etcd
		stop func()
	}
	nodes := make([]*node, n)
	var initial []string
	for i := range nodes {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("etcd-%d", i+1)
		cfg.Dir = t.TempDir()
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cu, pu := etcdtest.FreeURL(t, "http"), etcdtest.FreeURL(t, "http")
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfg.CompactHashCheckTime = 200 * time.Millisecond
		initial = append(initial, cfg.Name+"="+pu.String())
		nodes[i] = &node{cfg: cfg}
	}
	gates := func(cfg *embed.Config, initialCheck bool) {
		cfg.ServerFeatureGate = embed.NewConfig().ServerFeatureGate
		if err := cfg.ServerFeatureGate.(interface{ Set(string) error }).Set(ign.FeatureGates(initialCheck)); err != nil {
			t.Fatal(err)
		}
	}
	start := func(nd *node) error {
		e, err := embed.StartEtcd(nd.cfg)
		if err != nil {
			if e != nil {
				e.Close() // its listeners
			}
			return err
		}
		nd.e, nd.stop = e, sync.OnceFunc(e.Close)
		t.Cleanup(nd.stop)
		return nil
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, nd := range nodes {
		nd.cfg.InitialCluster = strings.Join(initial, ",")
		gates(nd.cfg, false)
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = start(nd) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, nd := range nodes {
		select {
		case <-nd.e.Server.ReadyNotify():
		case <-time.After(30 * time.Second):
			t.Fatal("the cluster did not form within 30 s")
		}
	}
	eps := func(nds ...*node) []string {
		var out []string
		for _, nd := range nds {
			out = append(out, nd.cfg.AdvertiseClientUrls[0].String())
		}
		return out
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: eps(nodes[0], nodes[1]), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	cli = c
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const precious = "precious-value-0123456789"
	for i := range 20 {
		if _, err := cli.Put(ctx, fmt.Sprintf("/k/%02d", i), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(ctx, "/precious", precious); err != nil {
		t.Fatal(err)
	}
	// Every member holds the write before etcd-3 goes down.
	for _, ep := range eps(nodes...) {
		one, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		for {
			r, err := one.Get(ctx, "/precious", clientv3.WithSerializable(), clientv3.WithCountOnly())
			if err == nil && r.Count == 1 {
				break
			}
			if ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		one.Close()
	}
	damaged := nodes[2]
	id = uint64(damaged.e.Server.MemberID())
	damaged.stop()

	// One byte of the value flipped in place, the database's structure
	// left intact (bbolt's own check passes; only a comparison finds it).
	db, err := bolt.Open(filepath.Join(damaged.cfg.Dir, "member", "snap", "db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	flipped := false
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("key"))
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if i := bytes.Index(v, []byte(precious)); i >= 0 {
				nv := bytes.Clone(v)
				nv[i] ^= 0x01
				flipped = true
				return b.Put(bytes.Clone(k), nv)
			}
		}
		return nil
	})
	db.Close()
	if err != nil || !flipped {
		t.Fatalf("flip a byte of the value in etcd-3's database: %v (found: %v)", err, flipped)
	}
	restart = func(check bool) error {
		gates(damaged.cfg, check)
		damaged.cfg.InitialCluster, damaged.cfg.ClusterState = strings.Join(initial, ","), embed.ClusterStateFlagExisting
		return start(damaged)
	}
	return restart, cli, id
}

// TestEtcdRefusesAMemberDamagedWhileOff: restarting with its peers
// serving, the initial check is on, and etcd refuses to start before it
// serves; firstboot has words for it, naming the member and the fix.
func TestEtcdRefusesAMemberDamagedWhileOff(t *testing.T) {
	restart, _, _ := damagedCluster(t)
	on, _ := initialCheck(2, 3)
	err := restart(on)
	if err == nil || !strings.Contains(err.Error(), "found data inconsistency with peers") {
		t.Fatalf("etcd-3 restarted on damaged data with its peers serving: %v, want refused", err)
	}
	if msg := (&Self{Name: "etcd-3"}).Explain(err.Error()); !strings.Contains(msg, "etcdimg replace etcd-3") {
		t.Errorf("firstboot has no words for %q", err)
	}
}

// TestTheCompactionHashCheckNamesTheDamagedMember: restarting with its
// peers down, there is no initial check and it serves; the leader's
// compaction hash check raises CORRUPT for that member by ID, not for a
// healthy one.
func TestTheCompactionHashCheckNamesTheDamagedMember(t *testing.T) {
	restart, cli, id := damagedCluster(t)
	off, _ := initialCheck(0, 3)
	if err := restart(off); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := cli.Put(ctx, "/after", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, r.Header.Revision); err != nil {
		t.Fatal(err)
	}
	for {
		alarms, err := cli.AlarmList(ctx)
		if err == nil {
			var got []string
			for _, a := range alarms.Alarms {
				got = append(got, fmt.Sprintf("%s %x", a.Alarm, a.MemberID))
				if a.Alarm == etcdserverpb.AlarmType_CORRUPT && a.MemberID != id {
					t.Fatalf("CORRUPT raised for member %x, not the damaged %x", a.MemberID, id)
				}
			}
			if len(got) == 1 && got[0] == fmt.Sprintf("CORRUPT %x", id) {
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("no CORRUPT alarm for the damaged member %x: %v", id, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
