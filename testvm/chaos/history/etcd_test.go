package history_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"etcdimg/internal/etcdtest"
	"etcdimg/testvm/chaos/history"
	"etcdimg/testvm/chaos/workload"
)

// TestRealEtcdPasses: the traffic of `etcdimg chaos` against a real etcd
// (embedded) checks linearizable, with no revision out of order: the
// checks refuse what etcd cannot answer, never what it does. Requests
// cut short by a timeout a little above etcd's latency leave writes of
// unknown outcome, some applied and read later; three members serve
// serializable reads from followers that may lag, and linearizable ones
// through them.
func TestRealEtcdPasses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		members int
		timeout time.Duration // per request
	}{
		{"one member", 1, 5 * time.Second},
		{"one member, requests cut short", 1, 5 * time.Millisecond},
		{"three members, requests cut short", 3, 10 * time.Millisecond},
		{"three members", 3, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			urls := members(t, tc.members)
			// Traffic in rounds of a second until there is enough to say
			// something: on a loaded machine, requests cut short mostly
			// time out, and each client then waits 200 ms. Each round has
			// keys of its own and the same origin of time, so the rounds
			// together are one history.
			origin := time.Now()
			var ops []history.Op
			var n map[string]int
			for round := range 5 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				more, err := workload.Run(ctx, workload.Config{
					Endpoints: urls, Clients: 6, Keys: 3, Prefix: fmt.Sprintf("/history-test/%d/", round),
					Seed: 21 + uint64(round), Timeout: tc.timeout, Start: origin,
				})
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				ops = append(ops, more...)
				if n = count(ops); enough(len(ops), n, tc.timeout) {
					break
				}
			}
			start := time.Now()
			r := history.Check(ops, time.Minute)
			t.Logf("%d requests (%v) checked in %s", len(ops), n, time.Since(start).Round(time.Millisecond))
			if !r.Linearizable || r.TimedOut || len(r.Revisions) > 0 {
				t.Errorf("linearizable %v (timed out %v), revisions out of order: %q", r.Linearizable, r.TimedOut, r.Revisions)
			}
			if !enough(len(ops), n, tc.timeout) {
				t.Errorf("%d requests with a timeout of %s, %v: too few to say anything", len(ops), tc.timeout, n)
			}
		})
	}
}

// count tallies what in ops the checks have to get right: writes of
// unknown outcome, and of those the ones a read saw later (their
// revisions are checked across keys), failed reads, serializable reads,
// compare-and-swaps that failed.
func count(ops []history.Op) map[string]int {
	n := map[string]int{}
	got := map[string]bool{}
	for _, o := range ops {
		if o.Kind == history.Get && o.Found {
			got[o.Key+"\x00"+o.Got] = true
		}
	}
	for _, o := range ops {
		switch {
		case o.Unknown && o.Kind != history.Get:
			n["unknown writes"]++
			if got[o.Key+"\x00"+o.Value] {
				n["unknown writes read later"]++
			}
		case o.Failed:
			n["failed reads"]++
		case o.Kind == history.Get && o.Serializable:
			n["serializable reads"]++
		case o.Kind == history.CAS && !o.Succeeded:
			n["failed compare-and-swaps"]++
		}
	}
	return n
}

// enough: the traffic has something of each kind count tallies, and,
// when requests were cut short, writes of unknown outcome, some of them
// read later.
func enough(requests int, n map[string]int, timeout time.Duration) bool {
	if requests < 100 || n["serializable reads"] == 0 || n["failed compare-and-swaps"] == 0 {
		return false
	}
	return timeout >= time.Second || n["unknown writes read later"] > 0
}

// members starts an embedded etcd cluster of n members and returns
// their client URLs: the first alone, then each other one added to it
// as `etcdctl member add --learner`, started "existing", and promoted.
// A learner does not count for quorum, so the cluster keeps its leader
// while the new member starts, and the member serves at once.
func members(t *testing.T, n int) []string {
	// A member is added before the last has been up 5 s, which etcd's
	// strict reconfiguration check would refuse.
	first, u := etcdtest.Start(t, func(c *embed.Config) { c.StrictReconfigCheck = false })
	urls := []string{u}
	initial := first.Config().InitialCluster
	for i := 2; i <= n; i++ {
		cli, err := clientv3.New(clientv3.Config{Endpoints: urls, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		peer := etcdtest.FreeURL(t, "http")
		added, err := cli.MemberAddAsLearner(ctx, []string{peer.String()})
		if err != nil {
			t.Fatal(err)
		}
		// The new member reads the cluster from any member it is given:
		// each must know of it first.
		for _, u := range urls {
			if err := lists(ctx, u, i); err != nil {
				t.Fatal(err)
			}
		}
		name := fmt.Sprintf("m%d", i)
		initial += "," + name + "=" + peer.String()
		_, u := etcdtest.Start(t, func(c *embed.Config) {
			c.Name, c.InitialCluster, c.ClusterState = name, initial, embed.ClusterStateFlagExisting
			c.StrictReconfigCheck = false
			c.ListenPeerUrls, c.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		})
		for {
			_, err := cli.MemberPromote(ctx, added.Member.ID)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("promote member %d: %v", i, err)
			}
			time.Sleep(50 * time.Millisecond) // until it has caught up with the leader
		}
		urls = append(urls, u)
	}
	return urls
}

// lists waits until the member at u lists n members.
func lists(ctx context.Context, u string, n int) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{u}, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	for {
		l, err := cli.MemberList(ctx, clientv3.WithSerializable())
		if err == nil && len(l.Members) == n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s does not list %d members: %v", u, n, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
