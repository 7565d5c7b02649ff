package join

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"etcdimg/ignition/ign"
	"etcdimg/internal/authz"
	"etcdimg/internal/etcdtest"
	"etcdimg/pki"
)

// TestALearnerIsPromotedThroughAFollower: a member rejoining with a blank
// disk is added as a learner and promotes itself once caught up. Under
// auth, a follower forwards a promotion to the leader without the
// caller's identity and the leader refuses it ("auth: user name is
// empty"), so a member that could only ask the follower (and itself, a
// learner) was never promoted; in a cluster under `replace`, each round
// that landed on a follower cost 7 s or more. Three real etcds, with the
// cluster's certificates and auth on as the members set it up; etcd-3's
// only peer is the follower.
func TestALearnerIsPromotedThroughAFollower(t *testing.T) {
	ips := []string{"127.0.0.61", "127.0.0.62", "127.0.0.63"}
	dir := writePKI(t, ips...)
	peerURL := func(i int) *url.URL { return &url.URL{Scheme: "http", Host: ips[i] + ":2380"} }
	clientURL := func(i int) *url.URL { return &url.URL{Scheme: "https", Host: ips[i] + ":2379"} }
	member := func(i int, initial string) {
		name := fmt.Sprintf("etcd-%d", i+1)
		etcdtest.Start(t, func(cfg *embed.Config) {
			cfg.Name = name
			cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*clientURL(i)}, []url.URL{*clientURL(i)}
			cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peerURL(i)}, []url.URL{*peerURL(i)}
			cfg.ClientTLSInfo = transport.TLSInfo{
				CertFile: filepath.Join(dir, pki.MemberCertFile(name)), KeyFile: filepath.Join(dir, pki.MemberKeyFile(name)),
				TrustedCAFile: filepath.Join(dir, pki.CACertFile), ClientCertAuth: true,
			}
			cfg.InitialCluster = initial
			if i > 0 {
				cfg.ClusterState = embed.ClusterStateFlagExisting
			}
		})
	}
	tlsOf := func(name string) *Self {
		s := &Self{Name: name}
		var err error
		if s.tls, s.serverTLS, err = ign.MemberTLS(dir, pki.MemberCertFile(name), pki.MemberKeyFile(name), pki.CACertFile); err != nil {
			t.Fatal(err)
		}
		return s
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// etcd-1 alone, then etcd-2 as a voter, then auth on.
	initial := "etcd-1=" + peerURL(0).String()
	member(0, initial)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{clientURL(0).String()}, TLS: tlsOf("etcd-1").tls, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.MemberAdd(ctx, []string{peerURL(1).String()}); err != nil {
		t.Fatal(err)
	}
	initial += ",etcd-2=" + peerURL(1).String()
	member(1, initial)
	if _, err := authz.Ensure(ctx, cli, []string{"etcd-1", "etcd-2", "etcd-3"}); err != nil {
		t.Fatal(err)
	}
	// etcd-3 joins as a learner.
	// (etcd refuses a new member until every member has been connected
	// for a while.)
	var added *clientv3.MemberAddResponse
	for added == nil {
		if added, err = cli.MemberAddAsLearner(ctx, []string{peerURL(2).String()}); err != nil {
			if ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	member(2, initial+",etcd-3="+peerURL(2).String())

	// Its only peer is the follower.
	st, err := cli.Status(ctx, clientURL(0).String())
	if err != nil {
		t.Fatal(err)
	}
	follower := 1
	if st.Leader != st.Header.MemberId {
		follower = 0
	}
	me := tlsOf("etcd-3")
	me.IP = ips[2]
	me.Peers = []peer{{Name: fmt.Sprintf("etcd-%d", follower+1), PeerURL: peerURL(follower).String(), ClientURL: clientURL(follower).String()}}
	pctx, pcancel := context.WithTimeout(ctx, 45*time.Second)
	defer pcancel()
	if err := me.promote(pctx, added.Member.ID); err != nil {
		t.Fatalf("promote through the follower etcd-%d: %v", follower+1, err)
	}
	list, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range list.Members {
		if m.ID == added.Member.ID && m.IsLearner {
			t.Errorf("etcd-3 %x is still a learner", m.ID)
		}
	}
}
