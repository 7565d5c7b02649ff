package firstboot

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"etcdimg/ignition/ign"
	"etcdimg/pki"
	"etcdimg/spec"
)

// TestObservingAPeerKeepsOneConnection: a member waiting for its peers
// asks each of them several times a second; the rounds share one TLS
// connection per peer instead of a handshake per question (half a second
// of CPU on each side under emulation). And a member that decided to
// start the new cluster keeps answering "starting" until each peer still
// deciding has heard it. The peer is a real probe server with the
// cluster's real certificates, on a loopback address.
func TestObservingAPeerKeepsOneConnection(t *testing.T) {
	c := spec.Default(2)
	c.Members[0].IP, c.Members[1].IP = "127.0.0.42", "127.0.0.43"
	set, err := pki.Ensure(c, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, f := range set.Files() {
		os.WriteFile(filepath.Join(dir, f.Name), f.Data, f.Mode)
	}
	member := func(name, ip string) *self {
		s := &self{Name: name, Cluster: "c-token", IP: ip}
		var err error
		if s.tls, s.serverTLS, err = ign.MemberTLS(dir, pki.MemberCertFile(name), pki.MemberKeyFile(name), pki.CACertFile); err != nil {
			t.Fatal(err)
		}
		return s
	}
	peerSelf := member("etcd-2", "127.0.0.43")
	var handshakes atomic.Int32
	peerSelf.serverTLS.VerifyConnection = func(tls.ConnectionState) error { handshakes.Add(1); return nil }
	pr, err := peerSelf.serveProbe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.stop()

	me := member("etcd-1", "127.0.0.42")
	me.Peers = []peer{{Name: "etcd-2", PeerURL: "https://127.0.0.43:2380", ClientURL: "https://127.0.0.43:2379"}}
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
	go func() {
		pr.waitTold(context.Background(), []string{"etcd-1"}, time.Minute)
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
	start := time.Now()
	pr.waitTold(context.Background(), []string{"etcd-1", "etcd-3"}, 200*time.Millisecond)
	if d := time.Since(start); d < 200*time.Millisecond || d > 2*time.Second {
		t.Errorf("waiting for a peer that never asks took %s, want the 200ms bound", d)
	}
	me.closePeerConns()
}
