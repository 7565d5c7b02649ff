package join

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"etcdimg/ignition/ign"
	"etcdimg/internal/spec"
	"etcdimg/pki"

	"go.etcd.io/etcd/server/v3/etcdserver"
	"go.uber.org/zap"
)

// TestObservingAPeerKeepsOneConnection: a member waiting for its peers
// asks each of them several times a second; the rounds share one TLS
// connection per peer instead of a handshake per question (half a second
// of CPU on each side under emulation). And a member that decided to
// start the new cluster keeps answering "starting" until each peer still
// deciding has heard it. The peer is a real probe server with the
// cluster's real certificates, on a loopback address.
func TestObservingAPeerKeepsOneConnection(t *testing.T) {
	me, peerSelf := probeMembers(t, "127.0.0.42", "127.0.0.43")
	var handshakes atomic.Int32
	peerSelf.serverTLS.VerifyConnection = func(tls.ConnectionState) error { handshakes.Add(1); return nil }
	pr, err := peerSelf.serveProbe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.stop()

	for round := range 5 {
		states := me.observeAll(context.Background())
		if states[0].State != "blank" {
			t.Fatalf("round %d: peer is %+v, want blank", round, states[0])
		}
	}
	if n := handshakes.Load(); n != 1 {
		t.Errorf("5 rounds made %d TLS handshakes with the peer, want 1", n)
	}

	// The peer decides to start the new cluster: before it hands its
	// port to etcd it waits until this member has heard "starting", and
	// no longer (a member that never asks costs it the bound).
	pr.set(peerSelf, "starting")
	told := make(chan struct{})
	asker := peer{Name: "etcd-1", PeerURL: "https://127.0.0.42:2380"}
	go func() {
		peerSelf.waitTold(context.Background(), pr, []peer{asker}, time.Minute)
		close(told)
	}()
	select {
	case <-told:
		t.Fatal("the port was handed over before etcd-1 heard \"starting\"")
	case <-time.After(100 * time.Millisecond):
	}
	if st := me.observeAll(context.Background()); st[0].State != "starting" {
		t.Fatalf("peer is %+v, want starting", st[0])
	}
	select {
	case <-told:
	case <-time.After(5 * time.Second):
		t.Fatal("etcd-1 heard \"starting\", but the wait went on")
	}
	if peerSelf.waitTold(context.Background(), pr, []peer{asker, {Name: "etcd-3", PeerURL: "https://127.0.0.44:2380"}}, 200*time.Millisecond) {
		t.Error("waiting for a peer that never asks ended as if it had heard")
	}
	me.closePeerConns()
	peerSelf.closePeerConns()
}

// TestMembersDecidingTogetherDoNotWaitForEachOther: two members that
// decide to start the new cluster at the same moment each wait, before
// handing their peer port to etcd, until the other has heard
// "starting"; neither asks any more, so each must learn it by asking the
// other. Before, each waited out the bound (3 s of every three-member
// `up`).
func TestMembersDecidingTogetherDoNotWaitForEachOther(t *testing.T) {
	a, b := probeMembers(t, "127.0.0.45", "127.0.0.46")
	pa, err := a.serveProbe()
	if err != nil {
		t.Fatal(err)
	}
	defer pa.stop()
	pb, err := b.serveProbe()
	if err != nil {
		t.Fatal(err)
	}
	defer pb.stop()
	pa.set(a, "starting")
	pb.set(b, "starting")
	done := make(chan bool, 2)
	go func() { done <- a.waitTold(context.Background(), pa, a.Peers, 10*time.Second) }()
	go func() { done <- b.waitTold(context.Background(), pb, b.Peers, 10*time.Second) }()
	for range 2 {
		if !<-done {
			t.Error("a member waited out the bound for a peer that had decided the same")
		}
	}
	a.closePeerConns()
	b.closePeerConns()
}

// probeMembers are etcd-1 and etcd-2 of a two-member cluster on the two
// loopback addresses, with the cluster's real certificates, each the
// other's peer.
func probeMembers(t *testing.T, ip1, ip2 string) (*Self, *Self) {
	dir := writePKI(t, ip1, ip2)
	member := func(name, ip, peerName, peerIP string) *Self {
		s := &Self{Name: name, Cluster: "c-token", IP: ip,
			Peers: []peer{{Name: peerName, PeerURL: "https://" + peerIP + ":2380", ClientURL: "https://" + peerIP + ":2379"}}}
		var err error
		if s.tls, s.serverTLS, err = ign.MemberTLS(dir, pki.MemberCertFile(name), pki.MemberKeyFile(name), pki.CACertFile); err != nil {
			t.Fatal(err)
		}
		return s
	}
	return member("etcd-1", ip1, "etcd-2", ip2), member("etcd-2", ip2, "etcd-1", ip1)
}

// writePKI writes the PKI of a cluster of one member per address (etcd-1
// at the first) to a new directory, as build lays it out, and returns it.
func writePKI(t *testing.T, ips ...string) string {
	t.Helper()
	c := spec.Default(len(ips))
	for i, ip := range ips {
		c.Members[i].IP = ip
	}
	set, err := pki.Ensure(c, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, f := range set.Files() {
		path := filepath.Join(dir, f.Name)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, f.Data, f.Mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestEtcdAskingAStartingMemberStopsThere: a new member's etcd asks its
// peers, in the order of their URLs, whether it was bootstrapped, and
// waits 1 s on each peer whose etcd holds the port without serving. A
// member starting the new cluster answers etcd's question itself, so
// etcd's own lookup (the function etcd runs, on the real probe server)
// ends there and never reaches the next peer. A deciding member does
// not, and etcd goes on to the next peer, as before.
func TestEtcdAskingAStartingMemberStopsThere(t *testing.T) {
	starter, asker := probeMembers(t, "127.0.0.47", "127.0.0.48")
	starter.WantID = 0x826b16de9cf03623
	pr, err := starter.serveProbe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.stop()
	// The next peer: a port that accepts and hangs up, counting.
	next, err := net.Listen("tcp", "127.0.0.49:2380")
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	var reached atomic.Int32
	go func() {
		for {
			c, err := next.Accept()
			if err != nil {
				return
			}
			reached.Add(1)
			c.Close()
		}
	}()
	urls := []string{"https://127.0.0.47:2380", "https://127.0.0.49:2380"}
	rt := &http.Transport{TLSClientConfig: asker.tls}
	defer rt.CloseIdleConnections()

	if _, err := etcdserver.GetClusterFromRemotePeers(zap.NewNop(), urls, rt); err == nil {
		t.Fatal("a deciding member's probe gave etcd a cluster")
	}
	if reached.Load() != 1 {
		t.Fatalf("etcd asked the next peer %d times after a deciding member, want 1", reached.Load())
	}
	pr.set(starter, "starting")
	if _, err := etcdserver.GetClusterFromRemotePeers(zap.NewNop(), urls, rt); err == nil || !strings.Contains(err.Error(), "failed to get raft cluster member(s)") {
		t.Fatalf("etcd's lookup at a starting member: %v, want its empty-cluster error", err)
	}
	if reached.Load() != 1 {
		t.Errorf("etcd went on to the next peer after a starting member answered")
	}
}

// TestTheFirstMemberWaitsForTheNext: only the member whose peer URL
// sorts first waits (for the one that sorts next) before its etcd starts.
func TestTheFirstMemberWaitsForTheNext(t *testing.T) {
	u := func(ip string) string { return "https://" + ip + ":2380" }
	peers := func(ips ...string) []peer {
		var ps []peer
		for _, ip := range ips {
			ps = append(ps, peer{Name: ip, PeerURL: u(ip)})
		}
		return ps
	}
	for _, tc := range []struct {
		self  string
		peers []peer
		want  string // "" for no wait
	}{
		{"192.168.2.51", peers("192.168.2.53", "192.168.2.52"), "192.168.2.52"},
		{"192.168.2.52", peers("192.168.2.51", "192.168.2.53"), ""},
		{"192.168.2.53", peers("192.168.2.51", "192.168.2.52"), ""},
		{"192.168.2.10", peers("192.168.2.9"), "192.168.2.9"}, // etcd sorts the strings
		{"192.168.2.51", nil, ""},
	} {
		s := &Self{PeerURL: u(tc.self), Peers: tc.peers}
		next, ok := s.firstAsked()
		if ok != (tc.want != "") || (ok && next.Name != tc.want) {
			t.Errorf("%s: waits for %q (%v), want %q", tc.self, next.Name, ok, tc.want)
		}
	}
}
