package chaos

import (
	"context"
	"strings"
	"testing"
	"time"

	"etcdimg/cluster"
	"etcdimg/cluster/health"
	"etcdimg/internal/etcdtest"
)

// TestCaughtUp against a real (embedded) etcd: a member that answers has
// applied what it committed; a member that does not answer is named when
// the bound runs out.
func TestCaughtUp(t *testing.T) {
	_, u := etcdtest.Start(t, nil)
	up := &cluster.Etcd{Endpoints: []health.Endpoint{{Member: "etcd-1", URL: u}}}
	if took, err := caughtUp(context.Background(), up, 10*time.Second); err != nil || took < 0 {
		t.Fatalf("a running member: %v, %v", took, err)
	}
	down := etcdtest.FreeURL(t, "http")
	withDown := &cluster.Etcd{Endpoints: append(up.Endpoints, health.Endpoint{Member: "etcd-2", URL: down.String()})}
	took, err := caughtUp(context.Background(), withDown, 2*time.Second)
	if err == nil || took != -1 || !strings.Contains(err.Error(), "not caught up within 2s: etcd-2:") {
		t.Fatalf("a member down: %v, %v", took, err)
	}
}
