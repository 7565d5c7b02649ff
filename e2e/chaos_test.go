package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestChaosShortRun is the short run of `etcdimg chaos` that `make test`
// makes: a three-member cluster under `up`, 60 s of traffic from eight
// clients while the leader is killed (and booted again) and then put in
// a minority by a partition of the LAN (and the partition lifted). Every
// check passes, and the report and its files are written. Then, on the
// same cluster, the lifecycle as faults: a replace with a blank data disk
// (a new member ID, the old disk set aside) and a roll keeping the disks,
// under the same traffic and checks.
func TestChaosShortRun(t *testing.T) {
	u := upThree(t)
	stdout, stderr, code := etcdimg(t, u.work, "chaos", "--out", u.out, "--duration", "60s", "--faults", "kill:leader,partition:split", "--seed", "1")
	t.Logf("chaos:\n%s", stdout)
	if code != 0 {
		t.Fatalf("chaos: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"verdict: PASS", "kill leader", "partition split", "history linearizable (porcupine, etcd's KV model)"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
	runs, _ := filepath.Glob(filepath.Join(u.out, "chaos", "*"))
	if len(runs) != 1 {
		t.Fatalf("chaos runs written: %v", runs)
	}
	for _, f := range []string{"history.json", "faults.json", "history.html", "report.txt", "etcd-1-console.log", "etcd-3-console.log"} {
		if fi, err := os.Stat(filepath.Join(runs[0], f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	// replace and roll, from images built from the spec before the run.
	stdout, stderr, code = etcdimg(t, u.work, "chaos", "--out", u.out, "--duration", "50s", "--faults", "replace:blank,roll:keep", "--seed", "2")
	t.Logf("chaos:\n%s", stdout)
	if code != 0 {
		t.Fatalf("chaos: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"verdict: PASS", "replace blank", "roll keep", "joined as a learner and promoted", "same member ID"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
	if old, _ := filepath.Glob(filepath.Join(u.out, "disks", "old", "*-data-*.img")); len(old) != 1 {
		t.Errorf("data disks set aside by the replace: %v, want 1", old)
	}

	// Anything but a cluster under up is refused in one line.
	_, stderr, code = etcdimg(t, u.work, "chaos", "--out", filepath.Join(u.work, "nothing-here"))
	if code != 1 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("chaos without a cluster: exit %d, stderr %q", code, stderr)
	}
}
