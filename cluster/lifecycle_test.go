package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/embed"

	"etcdimg/cluster/health"
	"etcdimg/internal/etcdtest"
)

// swapCounter is a Driver that counts the swaps asked of it and does
// none: the checks under test must refuse before any.
type swapCounter struct{ swaps int }

func (d *swapCounter) Running(string) (bool, error) { return true, nil }
func (d *swapCounter) Swap(context.Context, string, string, bool, Say) error {
	d.swaps++
	return errors.New("swap: not in this test")
}

// TestAStepBelowTheQuorumIsRefusedBeforeAnyPowerOff: replacing the only
// member with a blank disk (or one of two) leaves no quorum to add it
// back; the old code powered it off and the blank member waited for
// ever. Now it is refused before the driver is asked anything; with the
// disk kept, only --allow-outage accepts the outage. A cluster that
// answers with another ID than the images' is refused the same way.
func TestAStepBelowTheQuorumIsRefusedBeforeAnyPowerOff(t *testing.T) {
	_, url := etcdtest.Start(t, func(c *embed.Config) {
		c.Name = "etcd-1"
		c.InitialCluster = "etcd-1=" + c.AdvertisePeerUrls[0].String()
	})
	d := &swapCounter{}
	l := &Lifecycle{Etcd: &Etcd{Endpoints: []health.Endpoint{{Member: "etcd-1", URL: url}}}, Driver: d, Members: []string{"etcd-1"}, Timeout: time.Second}
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		o    ReplaceOptions
		want string
	}{
		{"blank", ReplaceOptions{Image: "x"}, "a blank etcd-1 could never be added back"},
		{"blank, outage allowed", ReplaceOptions{Image: "x", AllowOutage: true}, "--allow-outage needs --keep-disk"},
		{"kept disk", ReplaceOptions{Image: "x", KeepDisk: true}, "accept the outage with --allow-outage"},
	} {
		err := l.Replace(ctx, "etcd-1", tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if err := l.Roll(ctx, map[string]string{"etcd-1": "x"}, RollOptions{}); err == nil || !strings.Contains(err.Error(), "below its quorum") {
		t.Errorf("roll: %v", err)
	}
	// upgrade's check is roll's, in its own name.
	if err := l.CheckRoll(ctx, RollOptions{KeepDisks: true, Verb: "upgrade"}); err == nil || !strings.HasPrefix(err.Error(), "upgrade: refused, ") || !strings.Contains(err.Error(), "--allow-outage") {
		t.Errorf("upgrade: %v", err)
	}
	if d.swaps != 0 {
		t.Fatalf("the driver was asked to swap %d time(s) before the refusal", d.swaps)
	}
	snap, err := l.Etcd.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l.ClusterID = snap.ClusterID + 1
	if err := l.Replace(ctx, "etcd-1", ReplaceOptions{Image: "x", KeepDisk: true, AllowOutage: true}); err == nil || !strings.Contains(err.Error(), "images belong to cluster") {
		t.Errorf("another cluster: %v", err)
	}
	if d.swaps != 0 {
		t.Fatal("swapped a member of another cluster")
	}
	// The operator accepted the outage of a kept-disk replace: it goes
	// ahead (to the driver).
	l.ClusterID = snap.ClusterID
	if err := l.Replace(ctx, "etcd-1", ReplaceOptions{Image: "x", KeepDisk: true, AllowOutage: true}); err == nil || d.swaps != 1 {
		t.Errorf("outage allowed: %v, %d swaps", err, d.swaps)
	}
}

// TestQuorumWithout: the voters left while one member is down must be a
// quorum of the voters; learners do not vote.
func TestQuorumWithout(t *testing.T) {
	members := func(names ...string) *Snapshot {
		s := &Snapshot{}
		for i, n := range names {
			learner := strings.HasSuffix(n, "~")
			s.Members = append(s.Members, &etcdserverpb.Member{ID: uint64(i + 1), Name: strings.TrimSuffix(n, "~"), IsLearner: learner})
		}
		return s
	}
	for _, tc := range []struct {
		snap   *Snapshot
		member string
		o      ReplaceOptions
		ok     bool
	}{
		{members("a"), "a", ReplaceOptions{}, false},
		{members("a", "b"), "a", ReplaceOptions{}, false},
		{members("a", "b"), "a", ReplaceOptions{KeepDisk: true}, false},
		{members("a", "b"), "a", ReplaceOptions{KeepDisk: true, AllowOutage: true}, true},
		{members("a", "b", "c"), "a", ReplaceOptions{}, true},
		{members("a", "b", "c~"), "a", ReplaceOptions{}, false}, // two voters
		{members("a", "b", "c", "d"), "a", ReplaceOptions{}, true},
		{members("a", "b", "c"), "gone", ReplaceOptions{}, true}, // not a voter any more
	} {
		err := quorumWithout(tc.snap, tc.member, tc.o)
		if (err == nil) != tc.ok {
			t.Errorf("%d members, %s down, %+v: %v", len(tc.snap.Members), tc.member, tc.o, err)
		}
	}
}
