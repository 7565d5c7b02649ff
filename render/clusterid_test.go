package render

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"etcdimg/ignition"
	"etcdimg/ignition/ign"
	"etcdimg/outdir"
	"etcdimg/snapshot"
	"etcdimg/spec"
)

// etcdConf is member's etcd.conf as its rendered Ignition config holds it.
func etcdConf(t *testing.T, res *Result, member string) map[string]string {
	t.Helper()
	cfg, err := ign.Parse(res.Ignition[member])
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range cfg.Storage.Files {
		if f.Path == ign.EtcdConfPath {
			b, err := ign.Contents(f)
			if err != nil {
				t.Fatal(err)
			}
			env, err := ign.EnvMap(b)
			if err != nil {
				t.Fatal(err)
			}
			return env
		}
	}
	t.Fatalf("%s's config has no %s", member, ign.EtcdConfPath)
	return nil
}

// TestAGrownSpecKeepsTheClusterID: etcd fixes a cluster's ID at its first
// bootstrap, from the token and the initial members. After a member is
// added to the spec, the spec's initial cluster gives another ID; the
// images must still name the running cluster's, or a blank member of the
// cluster refuses to rejoin it ("refusing to join another cluster").
func TestAGrownSpecKeepsTheClusterID(t *testing.T) {
	dir := outdir.Layout(filepath.Join(t.TempDir(), "out"))
	three := spec.Default(3)
	first, err := Run(three, dir)
	if err != nil {
		t.Fatal(err)
	}
	want, err := snapshot.ClusterID(three.Name, ignition.InitialCluster(three))
	if err != nil {
		t.Fatal(err)
	}
	if got := etcdConf(t, first, "etcd-1")[ign.ClusterIDVar]; got != strconv.FormatUint(want, 16) {
		t.Fatalf("first render: %s=%q, want %x", ign.ClusterIDVar, got, want)
	}
	four := spec.Default(4)
	grown, err := Run(four, dir)
	if err != nil {
		t.Fatal(err)
	}
	if other, _ := snapshot.ClusterID(four.Name, ignition.InitialCluster(four)); other == want {
		t.Fatal("the grown spec gives the same ID: the test proves nothing")
	}
	for _, m := range []string{"etcd-1", "etcd-4"} {
		env := etcdConf(t, grown, m)
		if got := env[ign.ClusterIDVar]; got != strconv.FormatUint(want, 16) {
			t.Errorf("after growing, %s carries %s=%q, want the running cluster's %x", m, ign.ClusterIDVar, got, want)
		}
		if !strings.Contains(env["ETCD_INITIAL_CLUSTER"], "etcd-4=") {
			t.Errorf("%s: ETCD_INITIAL_CLUSTER %q lacks the new member", m, env["ETCD_INITIAL_CLUSTER"])
		}
	}
	// replace and roll compare the live cluster with the record before
	// anything goes down.
	if _, err := CheckClusterID(four, dir, want); err != nil {
		t.Errorf("the running cluster was refused: %v", err)
	}
	if _, err := CheckClusterID(four, dir, want+1); err == nil || !strings.Contains(err.Error(), "refusing before any member goes down") {
		t.Errorf("another cluster at the spec's addresses: %v", err)
	}
}

// TestADirectoryWithoutARecordAdoptsTheLiveCluster: a directory rendered
// before etcdimg kept a record takes the ID of the cluster its admin
// certificate reaches at the spec's addresses, once, and keeps it.
func TestADirectoryWithoutARecordAdoptsTheLiveCluster(t *testing.T) {
	dir := outdir.Layout(filepath.Join(t.TempDir(), "out"))
	four := spec.Default(4)
	const live = 0xabcdef0123
	// No render yet: no record.
	if adopted, err := CheckClusterID(four, dir, live); err != nil || !adopted {
		t.Fatalf("adopted %v, %v", adopted, err)
	}
	res, err := Run(four, dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := etcdConf(t, res, "etcd-2")[ign.ClusterIDVar]; got != strconv.FormatUint(live, 16) {
		t.Errorf("%s=%q, want the adopted %x", ign.ClusterIDVar, got, live)
	}
	if adopted, err := CheckClusterID(four, dir, live); err != nil || adopted {
		t.Errorf("second check: adopted %v, %v", adopted, err)
	}
}
