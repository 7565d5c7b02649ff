package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	"etcdimg/cluster/health"
	"etcdimg/internal/etcdtest"
	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
)

// TestCheckHealthNamesTheUnhealthyAndConfirmsOnlyAHealthyCluster: a
// member nobody answers for is in the table and the error, and no
// cluster ID is recorded; a healthy cluster is adopted.
func TestCheckHealthNamesTheUnhealthyAndConfirmsOnlyAHealthyCluster(t *testing.T) {
	c := spec.Default(1)
	dir := outdir.Layout(t.TempDir())
	ctx := context.Background()
	u := etcdtest.FreeURL(t, "http")
	down := u.String()
	var out, warn strings.Builder
	e := &Etcd{Endpoints: []health.Endpoint{{Member: "etcd-1", URL: down}}}
	err := e.CheckHealth(ctx, c, dir, time.Second, &out, &warn)
	if want := "health: unhealthy: etcd-1 (" + down + ")"; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
	if !strings.Contains(out.String(), "ENDPOINT") || !strings.Contains(out.String(), down) {
		t.Errorf("table:\n%s", out.String())
	}
	if rec, _ := render.LoadClusterRecord(dir); rec != nil {
		t.Errorf("an unhealthy cluster was recorded: %v", rec)
	}
	_, up := oneMember(t)
	out.Reset()
	if err := up.CheckHealth(ctx, c, dir, 5*time.Second, &out, &warn); err != nil {
		t.Fatalf("healthy: %v\n%s", err, out.String())
	}
	if rec, err := render.LoadClusterRecord(dir); err != nil || rec == nil {
		t.Errorf("a healthy cluster was not recorded: %v, %v", rec, err)
	}
	if warn.Len() > 0 {
		t.Errorf("warnings: %s", warn.String())
	}
}
