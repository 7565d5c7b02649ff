package restore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	csnap "go.etcd.io/etcd/client/v3/snapshot"
	"go.uber.org/zap"

	"etcdimg/internal/etcdtest"
	"etcdimg/internal/outdir"
)

// realSnapshot saves a snapshot of a real (embedded) etcd holding n keys.
func realSnapshot(t *testing.T, n int) string {
	t.Helper()
	_, cu := etcdtest.Start(t, nil)
	cc := clientv3.Config{Endpoints: []string{cu}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	cli, err := clientv3.New(cc)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for i := range n {
		cli.Put(context.Background(), fmt.Sprintf("/k/%d", i), "v")
	}
	p := filepath.Join(t.TempDir(), "s.db")
	if _, err := csnap.SaveWithVersion(context.Background(), zap.NewNop(), cc, p); err != nil {
		t.Fatal(err)
	}
	return p
}

func write(t *testing.T, path, data string) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o700)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestPrepareSetsTheOldClusterAside: the old images, data disks and
// earlier restore move into old/<time>/, byte for byte; the snapshot is
// copied in and the plan names it with a new token each time.
func TestPrepareSetsTheOldClusterAside(t *testing.T) {
	dir := outdir.Layout(t.TempDir())
	write(t, filepath.Join(dir.Dir(), "images", "etcd-1.img"), "old image")
	write(t, filepath.Join(dir.Dir(), "disks", "etcd-1-data.img"), "old disk")
	snap := realSnapshot(t, 20)
	t1 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	res, err := Prepare(dir, "c1", snap, "s.db", false, t1)
	if err != nil {
		t.Fatal(err)
	}
	aside := filepath.Join(dir.Dir(), "old", "20261127T100000Z")
	for rel, want := range map[string]string{"images/etcd-1.img": "old image", "disks/etcd-1-data.img": "old disk"} {
		if b, err := os.ReadFile(filepath.Join(aside, rel)); err != nil || string(b) != want {
			t.Errorf("%s set aside: %q %v", rel, b, err)
		}
	}
	plan, err := Load(dir)
	if err != nil || plan == nil || plan.Token != res.Plan.Token || !strings.HasPrefix(plan.Token, "c1-20261127-") || plan.TotalKeys != 20 {
		t.Fatalf("plan %+v %v", plan, err)
	}
	a, _ := os.ReadFile(snap)
	b, _ := os.ReadFile(plan.SnapshotPath(dir))
	if string(a) != string(b) {
		t.Error("the snapshot copied in differs")
	}
	// A second restore sets the first one's plan and snapshot aside too,
	// with another token.
	res2, err := Prepare(dir, "c1", snap, "s.db", false, t1.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if res2.Plan.Token == res.Plan.Token {
		t.Error("two restores gave one token")
	}
	if _, err := os.Stat(filepath.Join(dir.Dir(), "old", "20261127T110000Z", PlanFile)); err != nil {
		t.Errorf("the earlier plan was not set aside: %v", err)
	}
}

// TestPrepareRefusesBeforeTouchingAnything: a broken snapshot leaves the
// directory exactly as it was.
func TestPrepareRefusesBeforeTouchingAnything(t *testing.T) {
	dir := outdir.Layout(t.TempDir())
	write(t, filepath.Join(dir.Dir(), "images", "etcd-1.img"), "old image")
	bad := filepath.Join(t.TempDir(), "bad.db")
	os.WriteFile(bad, []byte("not a snapshot"), 0o600)
	if _, err := Prepare(dir, "c1", bad, "bad.db", false, time.Now()); err == nil {
		t.Fatal("a text file was accepted")
	}
	entries, _ := os.ReadDir(dir.Dir())
	if len(entries) != 1 || entries[0].Name() != "images" {
		t.Errorf("the directory changed: %v", entries)
	}
}
