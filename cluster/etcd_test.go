package cluster

import (
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
)

// TestSnapshotHealth: a replace checks the other members only, yet any
// member outside the spec (a learner left behind) still refuses it.
func TestSnapshotHealth(t *testing.T) {
	snap := &Snapshot{
		ClusterID: 7, LeaderID: 1,
		Members: []*etcdserverpb.Member{{ID: 1, Name: "a"}, {ID: 2, Name: "b"}, {ID: 3, Name: "c"}},
		Status: map[string]MemberStatus{
			"a": {Name: "a", ID: 1, ClusterID: 7, Leader: 1, RaftIndex: 100, Applied: 100},
			"b": {Name: "b", ID: 2, ClusterID: 7, Leader: 1, RaftIndex: 99, Applied: 99},
		},
	}
	spec := []string{"a", "b", "c"}
	if bad := snap.Unhealthy([]string{"a", "b"}, spec); len(bad) != 0 {
		t.Errorf("the others are healthy, got %v", bad)
	}
	if bad := snap.Unhealthy(spec, spec); len(bad) != 1 || !strings.Contains(bad[0], "c does not answer") {
		t.Errorf("c is down: %v", bad)
	}
	lagging := snap.Status["b"]
	lagging.RaftIndex, lagging.Applied = 10, 10
	snap.Status["b"] = lagging
	if bad := snap.Unhealthy([]string{"b"}, spec); len(bad) != 1 || !strings.Contains(bad[0], "90 entries behind") {
		t.Errorf("b lags: %v", bad)
	}
	// Every entry committed, few applied: a backlog after a restart.
	lagging.RaftIndex = 100
	snap.Status["b"] = lagging
	if bad := snap.Unhealthy([]string{"b"}, spec); len(bad) != 1 || !strings.Contains(bad[0], "applied 90 entries fewer") {
		t.Errorf("b applies a backlog: %v", bad)
	}
	lagging.Applied = 99
	snap.Status["b"] = lagging
	snap.Members = append(snap.Members, &etcdserverpb.Member{ID: 9, IsLearner: true, PeerURLs: []string{"https://x:2380"}})
	if bad := snap.Unhealthy(nil, spec); len(bad) != 1 || !strings.Contains(bad[0], "not in the spec") {
		t.Errorf("a stray learner: %v", bad)
	}
}
