package join

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
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
	"go.uber.org/zap/zapcore"

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

// testCluster is three members of the etcd built from go.mod, with the
// gates etcdimg gives them, on loopback; member i's log goes to
// logs[i] as etcd writes it (JSON lines).
type testCluster struct {
	t       *testing.T
	nodes   []*testNode
	initial string
	cli     *clientv3.Client // to etcd-1 and etcd-2
}

type testNode struct {
	cfg  *embed.Config
	e    *embed.Etcd
	stop func()
	log  string
}

func newTestCluster(t *testing.T) *testCluster {
	c := &testCluster{t: t}
	var initial []string
	for i := range 3 {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("etcd-%d", i+1)
		cfg.Dir = t.TempDir()
		cu, pu := etcdtest.FreeURL(t, "http"), etcdtest.FreeURL(t, "http")
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfg.CompactHashCheckTime = 200 * time.Millisecond
		initial = append(initial, cfg.Name+"="+pu.String())
		c.nodes = append(c.nodes, &testNode{cfg: cfg})
	}
	c.initial = strings.Join(initial, ",")
	var wg sync.WaitGroup
	errs := make([]error, len(c.nodes))
	for i := range c.nodes {
		c.nodes[i].cfg.InitialCluster = c.initial
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = c.start(i, false) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, nd := range c.nodes {
		select {
		case <-nd.e.Server.ReadyNotify():
		case <-time.After(30 * time.Second):
			t.Fatal("the cluster did not form within 30 s")
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.url(0), c.url(1)}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	c.cli = cli
	t.Cleanup(func() { cli.Close() })
	return c
}

func (c *testCluster) url(i int) string { return c.nodes[i].cfg.AdvertiseClientUrls[0].String() }

// start starts member i, existing after the first time, with or without
// the initial check, its log to a file of its own.
func (c *testCluster) start(i int, initialCheck bool) error {
	nd := c.nodes[i]
	nd.cfg.ServerFeatureGate = embed.NewConfig().ServerFeatureGate
	if err := nd.cfg.ServerFeatureGate.(interface{ Set(string) error }).Set(ign.FeatureGates(initialCheck)); err != nil {
		c.t.Fatal(err)
	}
	if nd.e != nil {
		nd.cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	nd.log = filepath.Join(c.t.TempDir(), "etcd.log")
	f, err := os.Create(nd.log)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { f.Close() })
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(f), zap.InfoLevel)
	nd.cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(core))
	e, err := embed.StartEtcd(nd.cfg)
	if err != nil {
		if e != nil {
			e.Close() // its listeners
		}
		return err
	}
	nd.e, nd.stop = e, sync.OnceFunc(e.Close)
	c.t.Cleanup(nd.stop)
	return nil
}

// self is member i as firstboot sees it: its peers' client URLs; the
// verdicts it keeps go to kept.
func (c *testCluster) self(i int, kept *[]string) *Self {
	s := &Self{Name: c.nodes[i].cfg.Name, KeepVerdict: func(why string) error { *kept = append(*kept, why); return nil }}
	for j, nd := range c.nodes {
		if j != i {
			s.Peers = append(s.Peers, ign.Peer{Name: nd.cfg.Name, PeerURL: nd.cfg.AdvertisePeerUrls[0].String(), ClientURL: c.url(j)})
		}
	}
	return s
}

// guardAfter feeds member i's log to a corruption guard, as the relay
// does, and returns the guard and the words the console got.
func (c *testCluster) guardAfter(i int, s *Self) (*CorruptionGuard, string) {
	g := s.NewCorruptionGuard()
	b, err := os.ReadFile(c.nodes[i].log)
	if err != nil {
		c.t.Fatal(err)
	}
	var said []string
	for _, l := range strings.Split(string(b), "\n") {
		if w := g.Line(l); w != "" {
			said = append(said, w)
		}
	}
	return g, strings.Join(said, "\n")
}

const precious = "precious-value-0123456789"

// writeAndDamage writes keys, waits until every member holds them,
// stops member i and flips one byte of a value in its database (bbolt's
// structure left intact: only a comparison finds it).
func (c *testCluster) writeAndDamage(i int) {
	t := c.t
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for k := range 20 {
		if _, err := c.cli.Put(ctx, fmt.Sprintf("/k/%02d", k), fmt.Sprint(k)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.cli.Put(ctx, "/precious", precious); err != nil {
		t.Fatal(err)
	}
	for j := range c.nodes {
		one, err := clientv3.New(clientv3.Config{Endpoints: []string{c.url(j)}, Logger: zap.NewNop()})
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
	nd := c.nodes[i]
	nd.stop()
	db, err := bolt.Open(filepath.Join(nd.cfg.Dir, "member", "snap", "db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	flipped := false
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("key"))
		cur := b.Cursor()
		for k, v := cur.First(); k != nil; k, v = cur.Next() {
			if at := bytes.Index(v, []byte(precious)); at >= 0 {
				nv := bytes.Clone(v)
				nv[at] ^= 0x01
				flipped = true
				return b.Put(bytes.Clone(k), nv)
			}
		}
		return nil
	})
	db.Close()
	if err != nil || !flipped {
		t.Fatalf("flip a byte of the value in %s's database: %v (found: %v)", nd.cfg.Name, err, flipped)
	}
}

// TestADamagedMemberIsRefusedForGood: restarting with its peers serving,
// the initial check is on and etcd refuses to start before it serves;
// the guard asks the peers, finds both against it, keeps the verdict on
// the disk and ends etcd's restarts; the next boot refuses the disk at
// once. (etcd alone would start it once its peers compact past the
// revision it compared.)
func TestADamagedMemberIsRefusedForGood(t *testing.T) {
	c := newTestCluster(t)
	c.writeAndDamage(2)
	on, _ := initialCheck(2, 3)
	err := c.start(2, on)
	if err == nil || !strings.Contains(err.Error(), etcdInconsistent) {
		t.Fatalf("etcd-3 restarted on damaged data with its peers serving: %v, want refused", err)
	}
	var kept []string
	s := c.self(2, &kept)
	g, said := c.guardAfter(2, s)
	if !strings.Contains(said, "corruption: etcd refused to start") {
		t.Errorf("the console got %q", said)
	}
	env, stop := g.BeforeRestart(context.Background())
	if env != nil || !strings.Contains(stop, "etcd-1 and etcd-2 agree against this member") || !strings.Contains(stop, "etcdimg replace etcd-3") {
		t.Fatalf("the guard's verdict: env %v, stop %q", env, stop)
	}
	if len(kept) != 1 || kept[0] != stop {
		t.Errorf("the verdict kept on the disk: %q", kept)
	}
	// After another exit without a refusal, nothing more is decided.
	if env, stop := g.BeforeRestart(context.Background()); env != nil || stop != "" {
		t.Errorf("a second BeforeRestart: %v %q", env, stop)
	}
}

// TestNoMajorityKeepsEtcdDown: refused, with one peer against it and the
// other not answering, a member does not start again (with the check,
// it would pass once its peers compact): it asks again until a majority
// decides, or the machine shuts down, and keeps no verdict.
func TestNoMajorityKeepsEtcdDown(t *testing.T) {
	c := newTestCluster(t)
	c.writeAndDamage(2)
	on, _ := initialCheck(2, 3)
	if err := c.start(2, on); err == nil {
		t.Fatal("etcd-3 restarted on damaged data with its peers serving")
	}
	var kept []string
	s := c.self(2, &kept)
	silent := etcdtest.FreeURL(t, "http")
	s.Peers[1].ClientURL = silent.String() // etcd-2 does not answer
	g, _ := c.guardAfter(2, s)
	g.peerWait, g.retry = time.Second, 200*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	env, stop := g.BeforeRestart(ctx)
	if env != nil || !strings.Contains(stop, "before a majority decided") || len(kept) != 0 {
		t.Fatalf("undecided: env %v, stop %q, kept %q", env, stop, kept)
	}
}

// TestAHealthyMemberRefusedBesideADamagedOneStartsAgain is a power cut
// of the whole cluster: damaged etcd-3 and healthy etcd-1 start first,
// without the initial check (no quorum served yet), and serve; healthy
// etcd-2 starts with it, and etcd refuses it for differing from etcd-3.
// The guard finds etcd-1 on its side, a majority: etcd-2 starts again
// without the check, and nothing is recorded against it.
func TestAHealthyMemberRefusedBesideADamagedOneStartsAgain(t *testing.T) {
	c := newTestCluster(t)
	c.writeAndDamage(2)
	if err := c.start(2, false); err != nil {
		t.Fatal(err)
	}
	<-c.nodes[2].e.Server.ReadyNotify()
	c.nodes[1].stop()
	on, _ := initialCheck(2, 3)
	err := c.start(1, on)
	if err == nil || !strings.Contains(err.Error(), etcdInconsistent) {
		t.Fatalf("etcd-2 with a damaged peer serving: %v, want refused by etcd's any-peer rule", err)
	}
	var kept []string
	s := c.self(1, &kept)
	g, _ := c.guardAfter(1, s)
	env, stop := g.BeforeRestart(context.Background())
	if stop != "" || len(env) != 1 || env[0] != ign.FeatureGatesVar+"="+ign.FeatureGates(false) {
		t.Fatalf("the guard's verdict: env %v, stop %q; want a start without the check", env, stop)
	}
	if len(kept) != 0 {
		t.Errorf("a verdict was kept against the healthy etcd-2: %q", kept)
	}
}

// TestTheCompactionHashCheckNamesTheDamagedMember: restarting with its
// peers down, there is no initial check and it serves; the leader's
// compaction hash check raises CORRUPT for that member by ID, not for a
// healthy one.
func TestTheCompactionHashCheckNamesTheDamagedMember(t *testing.T) {
	c := newTestCluster(t)
	c.writeAndDamage(2)
	off, _ := initialCheck(0, 3)
	if err := c.start(2, off); err != nil {
		t.Fatal(err)
	}
	<-c.nodes[2].e.Server.ReadyNotify()
	id := uint64(c.nodes[2].e.Server.MemberID())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cli := c.cli
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

func TestJudgeCountsAgainstTheClustersQuorum(t *testing.T) {
	me := hashAt{Revision: 10, CompactRevision: 5, Hash: 1}
	h := func(hash uint32) hashAt { return hashAt{10, 5, hash} }
	spec := func(n int) []ign.Peer {
		var out []ign.Peer
		for _, name := range []string{"a", "b", "c", "d"}[:n-1] {
			out = append(out, ign.Peer{Name: name})
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		peers map[string]hashAt
		size  int
		want  verdictKind
	}{
		{"both peers against", map[string]hashAt{"a": h(2), "b": h(2)}, 3, damaged},
		{"one peer with, one against", map[string]hashAt{"a": h(1), "b": h(2)}, 3, sound},
		{"one peer against, the other silent", map[string]hashAt{"a": h(2)}, 3, undecided},
		{"two peers against each other and me", map[string]hashAt{"a": h(2), "b": h(3)}, 3, undecided},
		{"against, at another compaction", map[string]hashAt{"a": {10, 7, 2}, "b": {10, 7, 2}}, 3, undecided},
		{"five: three against", map[string]hashAt{"a": h(2), "b": h(2), "c": h(2), "d": h(1)}, 5, damaged},
		{"five: two against, one with", map[string]hashAt{"a": h(2), "b": h(2), "c": h(1)}, 5, undecided},
		{"five: two with", map[string]hashAt{"a": h(1), "b": h(1), "c": h(2)}, 5, sound},
	} {
		got := judge("me", me, tc.peers, spec(tc.size))
		if got.kind != tc.want || got.words == "" {
			t.Errorf("%s: %v %q, want %v", tc.name, got.kind, got.words, tc.want)
		}
		if tc.name == "one peer against, the other silent" && !strings.Contains(got.words, "not answering: b") {
			t.Errorf("the silent peer is not named: %q", got.words)
		}
	}
}
