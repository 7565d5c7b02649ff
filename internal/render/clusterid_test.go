package render

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"etcdimg/ignition/ign"
	"etcdimg/internal/outdir"
	"etcdimg/internal/snapshot"
	"etcdimg/internal/spec"
)

// etcdConf is member's etcd.conf as its rendered Ignition config holds it.
func etcdConf(t *testing.T, res *Result, member string) map[string]string {
	t.Helper()
	cfg, err := ign.Parse(res.Ignition[member])
	if err != nil {
		t.Fatal(err)
	}
	b, err := ign.FileContents(cfg, ign.EtcdConfPath)
	if err != nil {
		t.Fatal(err)
	}
	env, err := ign.EnvMap(b)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// bootID is the cluster ID the members of res bootstrap with: their
// token and initial cluster.
func bootID(t *testing.T, res *Result, member string) uint64 {
	t.Helper()
	env := etcdConf(t, res, member)
	id, err := snapshot.ClusterID(env["ETCD_INITIAL_CLUSTER_TOKEN"], env["ETCD_INITIAL_CLUSTER"])
	if err != nil {
		t.Fatal(err)
	}
	return id
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
	want := bootID(t, first, "etcd-1")
	if got := etcdConf(t, first, "etcd-1")[ign.ClusterIDVar]; got != strconv.FormatUint(want, 16) {
		t.Fatalf("first render: %s=%q, want %x", ign.ClusterIDVar, got, want)
	}
	// up (or health) sees the cluster running with that ID.
	if _, err := CheckClusterID(three, dir, want); err != nil {
		t.Fatal(err)
	}
	four := spec.Default(4)
	grown, err := Run(four, dir)
	if err != nil {
		t.Fatal(err)
	}
	if bootID(t, grown, "etcd-1") == want {
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
	rec, err := LoadClusterRecord(dir)
	if err != nil || strings.Join(rec.Pending(four.Names()), ",") != "etcd-4" {
		t.Errorf("pending members: %v (%v), want etcd-4", rec.Pending(four.Names()), err)
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

// TestASpecCorrectedBeforeTheFirstBootBootstraps: until a cluster was
// seen running, the record follows the spec: a member's address fixed
// and rendered again gives images that bootstrap (the recorded ID is the
// one their initial cluster gives), not images that wait for ever to
// join a cluster that never existed.
func TestASpecCorrectedBeforeTheFirstBootBootstraps(t *testing.T) {
	dir := outdir.Layout(filepath.Join(t.TempDir(), "out"))
	c := spec.Default(3)
	if _, err := Run(c, dir); err != nil {
		t.Fatal(err)
	}
	c.Members[2].IP = "192.168.2.60"
	res, err := Run(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := etcdConf(t, res, "etcd-1")[ign.ClusterIDVar], strconv.FormatUint(bootID(t, res, "etcd-1"), 16); got != want {
		t.Errorf("after a correction before the first boot: %s=%s, the images bootstrap %s", ign.ClusterIDVar, got, want)
	}
}

// TestTwoClustersOfOneSpecHaveTwoIDs: the default spec (or one template)
// rendered twice made two clusters with one cluster ID, as the ID comes
// from the token (the name) and the members' addresses; their backups
// in one bucket could not be told apart, and one's retention deleted the
// other's. A new directory's token carries a random part.
func TestTwoClustersOfOneSpecHaveTwoIDs(t *testing.T) {
	a, err := Run(spec.Default(3), outdir.Layout(filepath.Join(t.TempDir(), "a")))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Run(spec.Default(3), outdir.Layout(filepath.Join(t.TempDir(), "b")))
	if err != nil {
		t.Fatal(err)
	}
	if idA, idB := bootID(t, a, "etcd-1"), bootID(t, b, "etcd-1"); idA == idB {
		t.Errorf("two clusters of the default spec share cluster ID %x", idA)
	}
	if tok := etcdConf(t, a, "etcd-1")["ETCD_INITIAL_CLUSTER_TOKEN"]; !strings.HasPrefix(tok, "etcd-cluster-1-") {
		t.Errorf("token %q, want the name and a random part", tok)
	}
}

// TestADirectoryWithoutARecordAdoptsTheLiveCluster: a directory whose
// configs exist but whose record does not (an older etcdimg's, or one
// whose record was lost or moved aside, as a refusal advises) keeps the
// token its configs carry: the members' disks are marked with it, and a
// member refuses a disk of another token (a first version of this fell
// back to the spec's name, and every rebuilt member refused its own
// disk). It gets no recorded ID from a render (its spec may have changed
// since the cluster formed); the first replace, roll, up or health
// records the cluster its admin certificate reaches, and it is kept.
func TestADirectoryWithoutARecordAdoptsTheLiveCluster(t *testing.T) {
	dir := outdir.Layout(filepath.Join(t.TempDir(), "out"))
	three, four := spec.Default(3), spec.Default(4)
	first, err := Run(three, dir)
	if err != nil {
		t.Fatal(err)
	}
	token := etcdConf(t, first, "etcd-1")["ETCD_INITIAL_CLUSTER_TOKEN"]
	live := bootID(t, first, "etcd-1")
	os.Remove(dir.ClusterRecord())
	res, err := Run(four, dir)
	if err != nil {
		t.Fatal(err)
	}
	env := etcdConf(t, res, "etcd-2")
	if env[ign.ClusterIDVar] != "" || env["ETCD_INITIAL_CLUSTER_TOKEN"] != token {
		t.Fatalf("a directory without its record: %s=%q, token %q, want none and the configs' %q", ign.ClusterIDVar, env[ign.ClusterIDVar], env["ETCD_INITIAL_CLUSTER_TOKEN"], token)
	}
	if adopted, err := CheckClusterID(four, dir, live); err != nil || !adopted {
		t.Fatalf("adopted %v, %v", adopted, err)
	}
	res, err = Run(four, dir)
	if err != nil {
		t.Fatal(err)
	}
	env = etcdConf(t, res, "etcd-2")
	if env[ign.ClusterIDVar] != strconv.FormatUint(live, 16) || env["ETCD_INITIAL_CLUSTER_TOKEN"] != token {
		t.Errorf("after adopting: %s=%q, token %q; want %x and %q", ign.ClusterIDVar, env[ign.ClusterIDVar], env["ETCD_INITIAL_CLUSTER_TOKEN"], live, token)
	}
	if adopted, err := CheckClusterID(four, dir, live); err != nil || adopted {
		t.Errorf("second check: adopted %v, %v", adopted, err)
	}
	// A directory of an older etcdimg: its configs carry the name.
	if got, older := priorToken(three, outdir.Layout(t.TempDir())); got != three.Name || older {
		t.Errorf("no configs: token %q (older %v), want the name", got, older)
	}
}
