package workload

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"etcdimg/internal/etcdtest"
	"etcdimg/testvm/chaos/history"
)

// TestRunAgainstARealEtcd: clients of every kind of request against a
// real etcd (embedded, one member) for a second make a history that is
// linearizable, whose revisions never go back for a client, with every
// kind of request in it, nearly all answered.
func TestRunAgainstARealEtcd(t *testing.T) {
	_, url := etcdtest.Start(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ops, err := Run(ctx, Config{Endpoints: []string{url}, Clients: 4, Keys: 3, Prefix: "/chaos-test/", Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	bad := 0
	for _, o := range ops {
		k := string(o.Kind)
		if o.Serializable {
			k += " serializable"
		}
		kinds[k]++
		if o.Unknown || o.Failed {
			bad++
		}
	}
	if bad*10 > len(ops) {
		t.Errorf("%d of %d requests failed or went unanswered against a healthy etcd", bad, len(ops))
	}
	for _, k := range []string{"put", "get", "get serializable", "cas", "delete"} {
		if kinds[k] == 0 {
			t.Errorf("no %s among %d requests: %v", k, len(ops), kinds)
		}
	}
	r := history.Check(ops, time.Minute)
	if !r.Linearizable || r.Checked == 0 {
		t.Errorf("%d requests: linearizable %v (timed out %v, %d checked)", len(ops), r.Linearizable, r.TimedOut, r.Checked)
	}
	if b := history.Backwards(ops); len(b) > 0 {
		t.Errorf("revisions went back: %q", b)
	}
	t.Logf("%d requests: %v", len(ops), kinds)
}

// TestABadConfigIsRefused: no clients, no keys or no endpoints is one
// clear error before anything is opened.
func TestABadConfigIsRefused(t *testing.T) {
	for _, cfg := range []Config{
		{Endpoints: []string{"http://127.0.0.1:1"}, Clients: 0, Keys: 3},
		{Endpoints: []string{"http://127.0.0.1:1"}, Clients: 2, Keys: 0},
		{Clients: 2, Keys: 3},
	} {
		if _, err := Run(context.Background(), cfg); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
}

// TestTheCheckCatchesASplitBrain runs the same traffic against a broken
// setup: two etcds that each believe they are the cluster (as a member
// restarted `new` on a blank disk would), half the clients on each. The
// history is not linearizable, and the visualization is written.
func TestTheCheckCatchesASplitBrain(t *testing.T) {
	_, a := etcdtest.Start(t, nil)
	_, b := etcdtest.Start(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ops, err := Run(ctx, Config{Endpoints: []string{a, b}, Clients: 4, Keys: 3, Prefix: "/chaos-test/", Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	r := history.Check(ops, time.Minute)
	if r.Linearizable || r.TimedOut {
		t.Fatalf("%d requests against two separate etcds: linearizable %v, timed out %v", len(ops), r.Linearizable, r.TimedOut)
	}
	path := filepath.Join(t.TempDir(), "history.html")
	if err := r.WriteHTML(path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() < 1000 {
		t.Errorf("visualization: %v", err)
	}
}
