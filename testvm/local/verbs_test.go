package local

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
	"etcdimg/testvm"
)

// TestVerbsWithNoClusterUnderUp: status says how to start the cluster
// and fails, down says there is nothing to power off and succeeds, stop
// and start point at the platform's tools; none leaves a run directory.
func TestVerbsWithNoClusterUnderUp(t *testing.T) {
	dir := outdir.Layout(t.TempDir())
	var w strings.Builder
	if err := Status(&w, spec.Default(1), dir); err == nil || err.Error() != "status: not running" ||
		w.String() != "not running (etcdimg up --out "+dir.Dir()+" starts it)\n" {
		t.Errorf("status: %v, said %q", err, w.String())
	}
	w.Reset()
	if err := PowerOff(&w, &w, dir); err != nil || w.String() != "no cluster is running from "+dir.Dir()+"\n" {
		t.Errorf("down: %v, said %q", err, w.String())
	}
	for verb, do := range map[string]func(outdir.Layout, string) (string, error){"stop": StopMember, "start": func(d outdir.Layout, n string) (string, error) { return StartMember(d, n, 0) }} {
		_, err := do(dir, "etcd-1")
		if want := verb + ": no cluster runs here under `etcdimg up`; on real machines, power the member with your platform's tools"; err == nil || err.Error() != want {
			t.Errorf("%s: %v, want %q", verb, err, want)
		}
	}
	if _, err := os.Stat(dir.RunDir()); !os.IsNotExist(err) {
		t.Errorf("left a run directory: %v", err)
	}
}

// TestStatusOfAStoppedMember: the table, then the last backup (unknown
// without the admin certificate), and an error that counts the members
// not running.
func TestStatusOfAStoppedMember(t *testing.T) {
	dir := outdir.Layout(t.TempDir())
	os.MkdirAll(dir.RunDir(), 0o700)
	st := &State{RunDir: dir.RunDir(), Members: []MemberState{{Name: "etcd-1", Client: 40179, Metrics: 40181, Backup: 40183}}}
	if err := st.save(); err != nil {
		t.Fatal(err)
	}
	var w strings.Builder
	err := Status(&w, spec.Default(1), dir)
	if err == nil || err.Error() != "status: 1 of 1 members are not running" {
		t.Errorf("status: %v", err)
	}
	lines := strings.Split(strings.TrimSuffix(w.String(), "\n"), "\n")
	if !strings.Contains(w.String(), "\netcd-1 ") || !strings.HasPrefix(lines[len(lines)-1], "last backup: unknown (") {
		t.Errorf("status said:\n%s", w.String())
	}
}

// TestStartingAnUnknownMemberReleasesTheLock: the member is refused,
// and the next command takes the run directory's lock.
func TestStartingAnUnknownMemberReleasesTheLock(t *testing.T) {
	dir := outdir.Layout(t.TempDir())
	os.MkdirAll(dir.RunDir(), 0o700)
	st := &State{RunDir: dir.RunDir(), Members: []MemberState{{Name: "etcd-1"}}}
	if err := st.save(); err != nil {
		t.Fatal(err)
	}
	if _, err := StartMember(dir, "etcd-9", 0); err == nil {
		t.Fatal("started a member the cluster does not have")
	}
	lock, err := LockDir(dir)
	if err != nil {
		t.Fatalf("the lock was kept: %v", err)
	}
	lock.Unlock()
}

// TestGrowDataDiskOnlyGrows: a stopped member's data disk grows, sparse,
// to the size asked; a size not larger is refused naming the flag and
// the disk's size, and a running member's disk is refused; neither
// changes the disk.
func TestGrowDataDiskOnlyGrows(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "etcd-1-data.img")
	if err := os.WriteFile(disk, []byte("ext4"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(disk, 1<<30)
	st := &State{RunDir: dir, Members: []MemberState{{Name: "etcd-1", DataDisk: disk}}}
	for _, tc := range []struct {
		size int64
		want string
	}{
		{512 << 20, "--data-size 512MiB: etcd-1's data disk is 1GiB already; a data disk only grows, pass a larger size"},
		{1 << 30, "--data-size 1GiB: etcd-1's data disk is 1GiB already"},
	} {
		if _, err := st.GrowDataDisk("etcd-1", tc.size); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("GrowDataDisk(%d): %v, want %q", tc.size, err, tc.want)
		}
	}
	line, err := st.GrowDataDisk("etcd-1", 4<<30)
	if err != nil || !strings.Contains(line, "grown from 1GiB to 4GiB") {
		t.Fatalf("GrowDataDisk(4GiB): %q, %v", line, err)
	}
	if fi, _ := os.Stat(disk); fi.Size() != 4<<30 {
		t.Errorf("disk is %d bytes", fi.Size())
	}
	if f, err := os.Open(disk); err == nil {
		b := make([]byte, 4)
		f.Read(b)
		f.Close()
		if string(b) != "ext4" {
			t.Errorf("the disk's content changed: %q", b)
		}
	}
	st.Members[0].QEMU = testvm.Process{PID: os.Getpid(), Args: os.Args}
	if _, err := st.GrowDataDisk("etcd-1", 8<<30); err == nil || !strings.Contains(err.Error(), "is running") {
		t.Errorf("GrowDataDisk of a running member: %v", err)
	}
}
