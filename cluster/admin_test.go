package cluster

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"etcdimg/cluster/health"
	"etcdimg/internal/etcdtest"
	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
)

// oneMember starts a real one-member etcd called etcd-1 and returns it
// with the Etcd that reaches it.
func oneMember(t *testing.T) (*embed.Etcd, *Etcd) {
	t.Helper()
	srv, url := etcdtest.Start(t, func(c *embed.Config) {
		c.Name = "etcd-1"
		c.InitialCluster = "etcd-1=" + c.AdvertisePeerUrls[0].String()
	})
	return srv, &Etcd{Endpoints: []health.Endpoint{{Member: "etcd-1", URL: url}}}
}

// TestLiveClusterIDIsTheAnsweringClusters: the ID is the one the server
// runs, and a cluster that does not answer is an error naming the
// request.
func TestLiveClusterIDIsTheAnsweringClusters(t *testing.T) {
	srv, e := oneMember(t)
	id, err := e.LiveClusterID(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(srv.Server.Cluster().ID()); id != want {
		t.Errorf("LiveClusterID = %x, want %x", id, want)
	}
	down := etcdtest.FreeURL(t, "http")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := (&Etcd{Endpoints: []health.Endpoint{{Member: "etcd-1", URL: down.String()}}}).LiveClusterID(ctx); err == nil || !strings.HasPrefix(err.Error(), "member list: ") {
		t.Errorf("no member up: %v", err)
	}
}

// TestConfirmClusterIDAdoptsThenRefusesAnother: a directory with no
// record adopts the cluster that answers (up and health do this once it
// is healthy), confirms it from then on, and refuses a cluster of
// another ID at the same addresses.
func TestConfirmClusterIDAdoptsThenRefusesAnother(t *testing.T) {
	c := spec.Default(1)
	dir := outdir.Layout(t.TempDir())
	srv, e := oneMember(t)
	ctx := context.Background()
	if err := ConfirmClusterID(ctx, c, dir, e); err != nil {
		t.Fatalf("first confirm: %v", err)
	}
	rec, err := render.LoadClusterRecord(dir)
	if err != nil || rec == nil {
		t.Fatalf("no record after the first confirm: %v, %v", rec, err)
	}
	if want := uint64(srv.Server.Cluster().ID()); rec.ID() != want {
		t.Errorf("recorded %x, the cluster is %x", rec.ID(), want)
	}
	if err := ConfirmClusterID(ctx, c, dir, e); err != nil {
		t.Errorf("the same cluster again: %v", err)
	}
	_, other := oneMember(t)
	if err := ConfirmClusterID(ctx, c, dir, other); err == nil || !strings.Contains(err.Error(), "belong to cluster") {
		t.Errorf("another cluster: %v", err)
	}
}

// TestAttachChecksBeforeItRecords: a refused check leaves the directory
// as it was (no record adopted); an accepted one records the cluster
// answering and hands its ID to the lifecycle.
func TestAttachChecksBeforeItRecords(t *testing.T) {
	c := spec.Default(1)
	dir := outdir.Layout(t.TempDir())
	srv, e := oneMember(t)
	ctx := context.Background()
	l := &Lifecycle{Etcd: e, Members: c.Names()}
	refused := errors.New("refused")
	if _, err := l.Attach(ctx, c, dir, func(context.Context, *Lifecycle) error { return refused }); !errors.Is(err, refused) {
		t.Fatalf("Attach = %v, want the check's error", err)
	}
	if _, err := os.Stat(dir.ClusterRecord()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused check wrote the record: %v", err)
	}
	checked := false
	adopted, err := l.Attach(ctx, c, dir, func(context.Context, *Lifecycle) error { checked = true; return nil })
	if err != nil || !adopted || !checked {
		t.Fatalf("Attach = %v, %v (checked %v)", adopted, err, checked)
	}
	if want := uint64(srv.Server.Cluster().ID()); l.ClusterID != want {
		t.Errorf("ClusterID = %x, want %x", l.ClusterID, want)
	}
	if adopted, err := l.Attach(ctx, c, dir, func(context.Context, *Lifecycle) error { return nil }); err != nil || adopted {
		t.Errorf("a recorded cluster again: adopted %v, %v", adopted, err)
	}
}

// TestAllowOutageNeedsKeptDisks: replace and roll refuse --allow-outage
// without kept disks in their own words, before they ask the cluster.
func TestAllowOutageNeedsKeptDisks(t *testing.T) {
	l := &Lifecycle{Etcd: &Etcd{}, Driver: &swapCounter{}, Members: []string{"etcd-1"}}
	ctx := context.Background()
	if err := l.CheckReplace(ctx, "etcd-1", ReplaceOptions{AllowOutage: true}); err == nil || err.Error() != "replace etcd-1: --allow-outage needs --keep-disk: a blank member cannot join a cluster without a quorum" {
		t.Errorf("replace: %v", err)
	}
	if err := l.CheckRoll(ctx, RollOptions{AllowOutage: true}); err == nil || err.Error() != "roll: --allow-outage needs --keep-disks: a blank member cannot join a cluster without a quorum" {
		t.Errorf("roll: %v", err)
	}
}

// TestEndpointsFollowReach: the members' own addresses by default, the
// addresses reach gives otherwise (a cluster under up: its forwarded
// ports).
func TestEndpointsFollowReach(t *testing.T) {
	c := spec.Default(2)
	eps := Endpoints(c, nil)
	if len(eps) != 2 || eps[1].Member != c.Members[1].Name || eps[1].URL != "https://"+c.Members[1].IP+":"+strconv.Itoa(layout.ClientPort) {
		t.Errorf("own addresses: %+v", eps)
	}
	reach := func(m spec.Member, port int) string { return "127.0.0.1:" + strconv.Itoa(40000+port) + "/" + m.Name }
	if eps := Endpoints(c, reach); eps[1].URL != "https://127.0.0.1:"+strconv.Itoa(40000+layout.ClientPort)+"/"+c.Members[1].Name {
		t.Errorf("reached: %+v", eps)
	}
}
