package local

import (
	"os"
	"strings"
	"testing"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
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
	for verb, do := range map[string]func(outdir.Layout, string) (string, error){"stop": StopMember, "start": StartMember} {
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
	if _, err := StartMember(dir, "etcd-9"); err == nil {
		t.Fatal("started a member the cluster does not have")
	}
	lock, err := LockDir(dir)
	if err != nil {
		t.Fatalf("the lock was kept: %v", err)
	}
	lock.Unlock()
}
