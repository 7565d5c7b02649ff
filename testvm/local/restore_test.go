package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	csnap "go.etcd.io/etcd/client/v3/snapshot"
	"go.uber.org/zap"

	"etcdimg/internal/etcdtest"
	"etcdimg/internal/outdir"
	"etcdimg/internal/restore"
	"etcdimg/internal/spec"
	"etcdimg/testvm"
)

// restoreOptions restores the snapshot at from into dir, with a spec and
// image inputs that count how often they are read.
func restoreOptions(dir outdir.Layout, from string, asked *[]string) RestoreOptions {
	return RestoreOptions{
		Dir: dir, From: from, Now: time.Now(), SpecGiven: true,
		Spec:   func() (*spec.Cluster, error) { *asked = append(*asked, "spec"); return spec.Default(1), nil },
		Inputs: func() error { *asked = append(*asked, "inputs"); return nil },
	}
}

// TestRestoreRefusesABadSnapshotBeforeTouchingAnything: a snapshot that
// is not one (or no snapshot, or another scheme) is refused with the
// directory as it was: no run directory (so no lock file), no restore,
// and neither the spec nor the inputs read.
func TestRestoreRefusesABadSnapshotBeforeTouchingAnything(t *testing.T) {
	dir := outdir.Layout(t.TempDir())
	bad := filepath.Join(t.TempDir(), "bad.db")
	os.WriteFile(bad, []byte("not a database"), 0o600)
	for from, want := range map[string]string{
		bad:          "",
		"":           "--snapshot is required",
		"http://x/y": "--snapshot http://x/y: give a file or s3://bucket/key",
		"s3://bkt":   "--snapshot s3://bkt: want s3://bucket/key",
	} {
		var asked []string
		_, _, err := Restore(restoreOptions(dir, from, &asked))
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%q: %v, want %q", from, err, want)
		}
		if len(asked) > 0 {
			t.Errorf("%q: read %v before refusing", from, asked)
		}
	}
	if es, _ := os.ReadDir(dir.Dir()); len(es) > 0 {
		t.Errorf("a refused restore left %v", es)
	}
}

// TestRestoreRefusesARunningCluster: with members running under `up`,
// the sound snapshot is refused after the lock and before the spec is
// read; nothing is set aside. With the members stopped (dead PIDs), it
// is prepared, and done releases the lock.
func TestRestoreRefusesARunningCluster(t *testing.T) {
	dir := outdir.Layout(t.TempDir())
	snap := snapshotOf(t)
	os.MkdirAll(filepath.Join(dir.Dir(), "images"), 0o700)
	os.MkdirAll(dir.RunDir(), 0o700)
	qemu := exec.Command("cat", "-", "run/etcd-1.img")
	stdin, _ := qemu.StdinPipe()
	defer stdin.Close()
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qemu.Process.Kill(); qemu.Wait() })
	p := testvm.Process{PID: qemu.Process.Pid, Args: qemu.Args}
	for deadline := time.Now().Add(5 * time.Second); !p.Running() && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
	}
	st := &State{RunDir: dir.RunDir(), Members: []MemberState{{Name: "etcd-1", QEMU: p}}}
	if err := st.save(); err != nil {
		t.Fatal(err)
	}
	var asked []string
	_, _, err := Restore(restoreOptions(dir, snap, &asked))
	if want := "the cluster in " + dir.Dir() + " is running (1 members); run `etcdimg down --out " + dir.Dir() + "` first"; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("running: %v, want %s", err, want)
	}
	if _, err := os.Stat(filepath.Join(dir.Dir(), "images")); err != nil || len(asked) > 0 {
		t.Errorf("a refused restore moved the images (%v) or read %v", err, asked)
	}
	qemu.Process.Kill()
	qemu.Wait()
	testvm.WaitGone(p.PID, 5*time.Second)
	res, done, err := Restore(restoreOptions(dir, snap, &asked))
	if err != nil {
		t.Fatalf("stopped: %v", err)
	}
	if strings.Join(asked, ",") != "spec,inputs" || len(res.Moved) != 1 || res.Moved[0] != "images" {
		t.Errorf("asked %v, moved %v", asked, res.Moved)
	}
	if _, err := restore.Load(dir); err != nil {
		t.Errorf("no plan: %v", err)
	}
	if _, err := LockDir(dir); err == nil || !strings.Contains(err.Error(), "another etcdimg command") {
		t.Errorf("the lock is not held before done: %v", err)
	}
	done()
	l, err := LockDir(dir)
	if err != nil {
		t.Fatalf("done left the lock held: %v", err)
	}
	l.Unlock()
}

// snapshotOf saves a snapshot of a real (embedded) etcd.
func snapshotOf(t *testing.T) string {
	t.Helper()
	_, cu := etcdtest.Start(t, nil)
	cc := clientv3.Config{Endpoints: []string{cu}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	p := filepath.Join(t.TempDir(), "s.db")
	if _, err := csnap.SaveWithVersion(context.Background(), zap.NewNop(), cc, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRestoreImagesSaysWhatItDidAndBuildsUnderTheLock: the snapshot
// verified, what was set aside and the new token come first; build runs
// while the lock is held; a failed build leaves the plan and says how to
// finish, a good one says what is next; either way the lock is released.
func TestRestoreImagesSaysWhatItDidAndBuildsUnderTheLock(t *testing.T) {
	dir := outdir.Layout(t.TempDir())
	snap := snapshotOf(t)
	os.MkdirAll(filepath.Join(dir.Dir(), "images"), 0o700)
	var asked []string
	failed := errors.New("no kernel")
	build := func(err error) func() error {
		return func() error {
			if _, lerr := LockDir(dir); lerr == nil {
				t.Error("built without the lock")
			}
			return err
		}
	}
	var w strings.Builder
	err := RestoreImages(restoreOptions(dir, snap, &asked), &w, build(failed))
	want := fmt.Sprintf("no kernel; the restore is planned (%s): fix this and run `etcdimg build --out %s`", filepath.Join(dir.Dir(), restore.PlanFile), dir.Dir())
	if !errors.Is(err, failed) || err.Error() != want {
		t.Errorf("failed build: %v, want %s", err, want)
	}
	plan, perr := restore.Load(dir)
	if perr != nil || plan == nil {
		t.Fatalf("no plan after a failed build: %v", perr)
	}
	lines := strings.Split(strings.TrimSuffix(w.String(), "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "snapshot "+snap+" verified: revision ") ||
		!strings.HasPrefix(lines[1], "set aside images in "+filepath.Join(dir.Dir(), "old")) ||
		lines[2] != "new cluster token "+plan.Token+": members of the old cluster can never join this one" {
		t.Errorf("said:\n%s", w.String())
	}
	w.Reset()
	if err := RestoreImages(restoreOptions(dir, snap, &asked), &w, build(nil)); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(w.String(), "\nnext: etcdimg up --out "+dir.Dir()+" (each member restores the snapshot on its blank data disk)\n") {
		t.Errorf("said:\n%s", w.String())
	}
	l, err := LockDir(dir)
	if err != nil {
		t.Fatalf("the lock was kept: %v", err)
	}
	l.Unlock()
}
