package join

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"etcdimg/ignition/ign"
	"etcdimg/pki"
)

// TestAPeerRestartingFromUndecidedDataIsNotBlank: a member whose disk
// was swapped for a blank one asks its peer, which restarts from its WAL
// written right after the first bootstrap, before the cluster's version
// was decided: that etcd answers `not_decided` on its peer port's
// /version exactly as one bootstrapping a new cluster does. It holds
// data, and the blank member must not start a new cluster beside it.
// The peer is a real etcd (embedded, with the cluster's certificates),
// stopped and started again from its data directory; it never reaches a
// quorum, so it never decides a version.
func TestAPeerRestartingFromUndecidedDataIsNotBlank(t *testing.T) {
	ips := []string{"127.0.0.71", "127.0.0.72"}
	dir := writePKI(t, ips...)
	peerURL := func(ip string) url.URL { return url.URL{Scheme: "https", Host: ip + ":2380"} }
	clientURL := func(ip string) url.URL { return url.URL{Scheme: "https", Host: ip + ":2379"} }
	tlsInfo := transport.TLSInfo{
		CertFile: filepath.Join(dir, pki.MemberCertFile("etcd-2")), KeyFile: filepath.Join(dir, pki.MemberKeyFile("etcd-2")),
		TrustedCAFile: filepath.Join(dir, pki.CACertFile), ClientCertAuth: true,
	}
	dataDir := t.TempDir()
	start := func() *embed.Etcd {
		cfg := embed.NewConfig()
		cfg.Name, cfg.Dir = "etcd-2", dataDir
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{clientURL(ips[1])}, []url.URL{clientURL(ips[1])}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peerURL(ips[1])}, []url.URL{peerURL(ips[1])}
		cfg.ClientTLSInfo, cfg.PeerTLSInfo = tlsInfo, tlsInfo
		pu0, pu1 := peerURL(ips[0]), peerURL(ips[1])
		cfg.InitialCluster = "etcd-1=" + pu0.String() + ",etcd-2=" + pu1.String()
		cfg.InitialClusterToken = "c-token"
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	me := &Self{Name: "etcd-1", Cluster: "c-token", IP: ips[0], PeerURL: "https://" + ips[0] + ":2380"}
	var err error
	if me.tls, me.serverTLS, err = ign.MemberTLS(dir, pki.MemberCertFile("etcd-1"), pki.MemberKeyFile("etcd-1"), pki.CACertFile); err != nil {
		t.Fatal(err)
	}
	pu := peerURL(ips[1])
	cu := clientURL(ips[1])
	me.Peers = []peer{{Name: "etcd-2", PeerURL: pu.String(), ClientURL: cu.String()}}
	defer me.closePeerConns()

	// The first bootstrap: etcd-2 writes its WAL; then the power cut.
	e := start()
	waitUntil(t, 30*time.Second, "etcd-2's WAL", func() bool { return hasEtcdData(dataDir) })
	stopUnready(e)
	// It restarts from its data, and waits for a quorum.
	e = start()
	defer stopUnready(e)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: me.tls}, Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	waitUntil(t, 30*time.Second, "etcd-2's peer port", func() bool {
		resp, err := hc.Get(pu.String() + "/version")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	states := me.observeAll(context.Background())
	markStarters(states, map[string]bool{}, me.WantID)
	if got := decide(states); got != decideWait {
		t.Errorf("etcd-2 restarting from its data observed as %+v: decided %q, want %q", states[0], got, decideWait)
	}
	// The whole decision, probe and all: no new cluster, however long.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if plan, err := me.bootstrapOrJoin(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("bootstrapOrJoin beside a peer with data: %+v, %v; want it still waiting", plan, err)
		if plan != nil && plan.Release != nil {
			plan.Release()
		}
	}
}

// TestDecideCountsAnUndecidedPeerAsData: the rule, as a table over what
// the peers said in the rounds so far. etcd on a peer's port whose
// cluster has not decided its version ("undecided") has a WAL: it counts
// for a new cluster only when this member heard that peer say it was
// starting one (having seen every member blank); otherwise it may be a
// member restarting from data written right after the first bootstrap,
// and the member waits. It never joins etcd that does not serve.
func TestDecideCountsAnUndecidedPeerAsData(t *testing.T) {
	const want = 0x826b
	for _, tc := range []struct {
		name   string
		rounds [][]string // each round, the state of peers a, b, ...
		decide string     // after the last round
	}{
		{"a lone undecided peer", [][]string{{"undecided"}}, decideWait},
		{"undecided beside blank", [][]string{{"blank", "undecided"}}, decideWait},
		{"undecided beside starting", [][]string{{"starting", "undecided"}}, decideWait},
		{"undecided beside restored", [][]string{{"restored", "undecided"}}, decideWait},
		{"two undecided", [][]string{{"undecided", "undecided"}}, decideWait},
		{"undecided beside etcd serving", [][]string{{"etcd", "undecided"}}, decideJoin},
		{"heard starting, then undecided", [][]string{{"starting"}, {"undecided"}}, decideNew},
		{"heard starting, then silent, then undecided", [][]string{{"starting", "blank"}, {"unreachable", "blank"}, {"undecided", "blank"}}, decideNew},
		{"both heard starting, both undecided", [][]string{{"starting", "blank"}, {"undecided", "starting"}, {"undecided", "undecided"}}, decideNew},
		{"one heard starting, the other never", [][]string{{"starting", "blank"}, {"undecided", "undecided"}}, decideWait},
		{"heard starting, then blank again (rebooted), then undecided", [][]string{{"starting"}, {"blank"}, {"undecided"}}, decideWait},
		{"blank, then undecided without a word", [][]string{{"blank"}, {"undecided"}}, decideWait},
		{"all blank", [][]string{{"blank", "blank"}}, decideNew},
		{"data", [][]string{{"blank", "data"}}, decideWait},
	} {
		t.Run(tc.name, func(t *testing.T) {
			starting := map[string]bool{}
			var states []peerState
			for _, round := range tc.rounds {
				states = nil
				for i, st := range round {
					states = append(states, peerState{Name: string(rune('a' + i)), State: st})
				}
				markStarters(states, starting, want)
			}
			if got := decide(states); got != tc.decide {
				t.Errorf("after %v (seen as %+v): %s, want %s", tc.rounds, states, got, tc.decide)
			}
		})
	}
}

// stopUnready stops an etcd that never served clients: its Close alone
// waits for client servers that wait for the server to be ready or
// stopping, so the server is stopped first.
func stopUnready(e *embed.Etcd) {
	e.Server.HardStop()
	e.Close()
}

// TestAStarterTellsAQuorumBeforeEtcdTakesItsPort: a member starting the
// new cluster hands its peer port to etcd only once enough members know
// it started (it, the peers starting already, and the deciding ones that
// heard it) to make a quorum: a peer that never heard takes its etcd for
// one that may hold data, and waits for it to serve, which without a
// quorum of starters it never would. Past the usual bound, it keeps
// telling, for as long as it takes.
func TestAStarterTellsAQuorumBeforeEtcdTakesItsPort(t *testing.T) {
	for _, tc := range []struct{ peers, deciding, want int }{
		{1, 1, 1}, // two members: the other must know
		{2, 2, 1}, // three, the others deciding: one of them
		{2, 1, 0}, // three, one starting already: a quorum
		{2, 0, 0},
		{4, 4, 2}, // five
		{4, 3, 1},
		{4, 2, 0},
	} {
		if got := toTellForQuorum(tc.peers, tc.deciding); got != tc.want {
			t.Errorf("%d peers, %d deciding: %d to tell, want %d", tc.peers, tc.deciding, got, tc.want)
		}
	}

	// Unbounded, on the real probe: it ends when the peer asks, late.
	asker, starter := probeMembers(t, "127.0.0.73", "127.0.0.74")
	pr, err := starter.serveProbe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.stop()
	pr.set(starter, "starting")
	done := make(chan bool, 1)
	go func() { done <- starter.waitHeard(context.Background(), pr, starter.Peers, 1, 0) }()
	time.Sleep(500 * time.Millisecond)
	select {
	case <-done:
		t.Fatal("the wait ended before the peer heard")
	default:
	}
	if st := asker.observeAll(context.Background()); st[0].State != "starting" {
		t.Fatalf("the starter observed as %+v", st[0])
	}
	select {
	case ok := <-done:
		if !ok {
			t.Error("the wait failed though the peer heard")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the peer heard, but the wait went on")
	}
	asker.closePeerConns()
	starter.closePeerConns()
}

// hasEtcdData reports whether dir holds an etcd member's data (a WAL),
// as the data disk's rule reads it.
func hasEtcdData(dir string) bool {
	wals, _ := filepath.Glob(filepath.Join(dir, "member", "wal", "*.wal"))
	return len(wals) > 0
}

// TestDecideNeverBootstrapsBesideData: new only when every peer reports
// a blank disk; any etcd answering means join; anything unknown means
// wait.
func TestDecideNeverBootstrapsBesideData(t *testing.T) {
	p := func(states ...string) []peerState {
		var out []peerState
		for i, s := range states {
			out = append(out, peerState{Name: string(rune('a' + i)), State: s})
		}
		return out
	}
	for _, tc := range []struct {
		states []peerState
		want   string
	}{
		{p(), decideNew}, // one member
		{p("blank", "blank"), decideNew},
		{p("blank", "unreachable"), decideWait},
		{p("unreachable", "unreachable"), decideWait},
		{p("blank", "data"), decideWait},
		// etcd with an undecided version may be restarting from data;
		// only one heard starting counts (TestDecideCountsAnUndecidedPeerAsData).
		{p("blank", "undecided"), decideWait},
		{p("undecided", "undecided"), decideWait},
		{p("undecided", "unreachable"), decideWait},
		{p("etcd", "unreachable"), decideJoin},
		{p("blank", "etcd"), decideJoin},
		{p("etcd", "etcd"), decideJoin},
		// Peers that restored the image's snapshot and wait for a quorum
		// are starting this cluster, as starting ones are.
		{p("restored", "blank"), decideNew},
		{p("restored", "restored"), decideNew},
		{p("restored", "unreachable"), decideWait},
		{p("restored", "data"), decideWait},
		{p("restored", "etcd"), decideJoin},
		// A peer that said it is starting the new cluster counts as one.
		{p("starting", "blank"), decideNew},
		{p("starting", "unreachable"), decideWait},
	} {
		if got := decide(tc.states); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.states, got, tc.want)
		}
	}
}

// TestStartersStayStarters: a peer that said it is starting the new
// cluster stays one while silent or loading this cluster's data; not
// when it shows another cluster's data, serves etcd, or says blank again
// (rebooted); a peer never heard starting gets no such credit.
func TestStartersStayStarters(t *testing.T) {
	starting := map[string]bool{}
	markStarters([]peerState{{Name: "a", State: "starting"}, {Name: "b", State: "blank"}}, starting, 0x826b)
	for _, tc := range []struct {
		in   peerState
		want string
	}{
		{peerState{Name: "a", State: "unreachable"}, "starting"},
		{peerState{Name: "a", State: "data"}, "starting"},
		{peerState{Name: "a", State: "data", ClusterID: 0x826b}, "starting"},
		{peerState{Name: "a", State: "data", ClusterID: 0x1234}, "data"},
		{peerState{Name: "a", State: "etcd", ClusterID: 0x826b}, "etcd"},
		{peerState{Name: "b", State: "unreachable"}, "unreachable"},
		{peerState{Name: "a", State: "blank"}, "blank"},
		{peerState{Name: "a", State: "unreachable"}, "unreachable"}, // rebooted blank: no longer a starter
	} {
		states := []peerState{tc.in}
		markStarters(states, starting, 0x826b)
		if states[0].State != tc.want {
			t.Errorf("%+v: %s, want %s", tc.in, states[0].State, tc.want)
		}
	}
}

// TestForeignPeersStopAJoin: a member whose image names another cluster
// (another token, or initial cluster) than its peers run never joins
// them; peers of its own cluster, or not answering, do not stop it.
func TestForeignPeersStopAJoin(t *testing.T) {
	s := &Self{Cluster: "c-new", WantID: 0x826b}
	if why := s.foreignPeers([]peerState{{Name: "etcd-2", State: "etcd", ClusterID: 0x826b}, {Name: "etcd-3", State: "unreachable"}}); why != "" {
		t.Errorf("own cluster refused: %s", why)
	}
	for _, st := range []string{"etcd", "data"} {
		if why := s.foreignPeers([]peerState{{Name: "etcd-2", State: st, ClusterID: 0x1234}}); !strings.Contains(why, "etcd-2 runs cluster 1234, but this image belongs to cluster 826b (token c-new): refusing to join another cluster") {
			t.Errorf("%s peer of another cluster: %q", st, why)
		}
	}
}

// TestForeignClusterIsNamed: a peer running another cluster ID than the
// one the data disk recorded stops this member; the same ID, or peers
// not answering, do not.
func TestForeignClusterIsNamed(t *testing.T) {
	same := []peerState{{Name: "etcd-2", State: "etcd", ClusterID: 0x826b}, {Name: "etcd-3", State: "unreachable"}}
	if why := foreignCluster("826b", same); why != "" {
		t.Errorf("same cluster refused: %s", why)
	}
	other := []peerState{{Name: "etcd-2", State: "etcd", ClusterID: 0x1234}}
	if why := foreignCluster("826b", other); !strings.Contains(why, "etcd-2 runs cluster 1234") {
		t.Errorf("another cluster: %q", why)
	}
	if why := foreignCluster("826b", []peerState{{Name: "etcd-2", State: "data"}}); why != "" {
		t.Errorf("a peer without an answer: %q", why)
	}
}

// waitUntil waits for ok, failing the test after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
