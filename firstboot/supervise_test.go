package firstboot

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lockedBuffer is a console the relay can write to from its goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func captureConsole(t *testing.T) *lockedBuffer {
	t.Helper()
	buf := &lockedBuffer{}
	old := serialOut
	serialOut = buf
	t.Cleanup(func() { serialOut = old })
	return buf
}

func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func unit(t *testing.T, name, body string) *Unit {
	t.Helper()
	u, err := ParseUnit(name, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func (s *service) startCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.starts
}

func waitUntil(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServiceRestartsAfterAFailedRespawn: when a restart cannot even
// start the program (it is missing for a moment), the supervisor keeps
// trying, and restarts it once it is back; it never waits twice for one
// process.
func TestServiceRestartsAfterAFailedRespawn(t *testing.T) {
	dir := t.TempDir()
	// Each run fails, and takes the program away as it goes: the respawn
	// after it cannot start it until the test puts it back.
	prog := script(t, dir, "prog", "mv \"$0\" \"$0.away\"\nexit 1\n")
	s := newService(unit(t, "flaky.service", "[Service]\nExecStart="+prog+"\nRestart=on-failure\nRestartSec=50ms\n"))
	if _, err := s.start(); err != nil {
		t.Fatal(err)
	}
	defer s.stop(5 * time.Second)
	waitUntil(t, 5*time.Second, "the program to take itself away", func() bool {
		_, err := os.Stat(prog + ".away")
		return err == nil
	})
	time.Sleep(300 * time.Millisecond) // respawns fail meanwhile
	if n := s.startCount(); n != 1 {
		t.Fatalf("%d starts while the program was missing", n)
	}
	if err := os.Rename(prog+".away", prog); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "a restart after the program came back", func() bool { return s.startCount() >= 2 })
}

// TestCrashLoopBacksOff: a program that fails at once is restarted with
// a growing delay, not every RestartSec forever.
func TestCrashLoopBacksOff(t *testing.T) {
	s := newService(unit(t, "crash.service", "[Service]\nExecStart=/bin/false\nRestart=always\nRestartSec=50ms\n"))
	if _, err := s.start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	s.stop(5 * time.Second)
	// Without backoff: ~60 starts in 3 s. With it: 50+100+200+400+800+1600 ms.
	if n := s.startCount(); n > 8 || n < 4 {
		t.Errorf("%d starts in 3 s; want the 4 to 8 of a doubling delay", n)
	}
}

// TestLongOutputLineDoesNotKillTheService: a line over a MiB is cut on
// the console, the relay keeps reading, the lines after it arrive, and
// the service is not killed by SIGPIPE.
func TestLongOutputLineDoesNotKillTheService(t *testing.T) {
	out := captureConsole(t)
	dir := t.TempDir()
	prog := script(t, dir, "talk", "head -c 2097152 /dev/zero | tr '\\0' x; echo; echo after-the-long-line; sleep 0.5; echo still-alive\n")
	s := newService(unit(t, "talk.service", "[Service]\nExecStart="+prog+"\n"))
	cmd, exited := startProcess(t, s)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Fatal("the service did not finish")
	}
	if !cmd.ProcessState.Success() {
		t.Errorf("the service died: %v", cmd.ProcessState)
	}
	waitUntil(t, 5*time.Second, "the relay to print the last line", func() bool { return strings.Contains(out.String(), "talk: still-alive") })
	if !strings.Contains(out.String(), "talk: after-the-long-line") || !strings.Contains(out.String(), "[line cut at 64 KiB]") {
		t.Errorf("console lacks the lines after the long one, or the cut mark")
	}
}

// TestOneshotBlocksTheNextUnit: start of a Type=oneshot unit returns
// only when its process has finished, and fails when it fails.
func TestOneshotBlocksTheNextUnit(t *testing.T) {
	dir := t.TempDir()
	done := filepath.Join(dir, "done")
	prog := script(t, dir, "setup", "sleep 0.5; touch "+done+"\n")
	if _, err := newService(unit(t, "setup.service", "[Service]\nType=oneshot\nExecStart="+prog+"\n")).start(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(done); err != nil {
		t.Errorf("start returned before the oneshot finished: %v", err)
	}
	if _, err := newService(unit(t, "bad.service", "[Service]\nType=oneshot\nExecStart=/bin/false\n")).start(); err == nil {
		t.Error("a failing oneshot started fine")
	}
}

// TestOrphansAreReaped: a service's grandchild whose parent exits is
// re-parented to PID 1 (here, the test process made a subreaper) and is
// reaped, while the services' own processes keep their exit status for
// their supervisors.
func TestOrphansAreReaped(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("subreaper: %v", err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "orphan.pid")
	prog := script(t, dir, "fork", "sleep 0.2 &\necho $! > "+pidFile+"\nexit 0\n")
	s := newService(unit(t, "fork.service", "[Service]\nType=oneshot\nExecStart="+prog+"\n"))
	if _, err := s.start(); err != nil {
		t.Fatalf("the service lost its own exit status: %v", err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	orphan := strings.TrimSpace(string(b))
	zombie := func() bool {
		st, err := os.ReadFile("/proc/" + orphan + "/stat")
		return err == nil && strings.Contains(string(st), ") Z ")
	}
	waitUntil(t, 5*time.Second, "the orphan to exit", zombie)
	reaped := reapOrphans()
	if zombie() {
		t.Fatalf("orphan %s is still a zombie after reaping (reaped %v)", orphan, reaped)
	}
}

// TestDecideNeverBootstrapsBesideData: new only when every peer reports
// a blank disk; any etcd answering means join; anything unknown means
// wait.
func TestDecideNeverBootstrapsBesideData(t *testing.T) {
	p := func(states ...string) []peerState {
		var out []peerState
		for i, s := range states {
			out = append(out, peerState{Name: string(rune('a' + i)), State: s})
		}
		return out
	}
	for _, tc := range []struct {
		states []peerState
		want   string
	}{
		{p(), decideNew}, // one member
		{p("blank", "blank"), decideNew},
		{p("blank", "unreachable"), decideWait},
		{p("unreachable", "unreachable"), decideWait},
		{p("blank", "data"), decideWait},
		// etcd with an undecided version may be restarting from data;
		// only one heard starting counts (TestDecideCountsAnUndecidedPeerAsData).
		{p("blank", "undecided"), decideWait},
		{p("undecided", "undecided"), decideWait},
		{p("undecided", "unreachable"), decideWait},
		{p("etcd", "unreachable"), decideJoin},
		{p("blank", "etcd"), decideJoin},
		{p("etcd", "etcd"), decideJoin},
		// Peers that restored the image's snapshot and wait for a quorum
		// are starting this cluster, as starting ones are.
		{p("restored", "blank"), decideNew},
		{p("restored", "restored"), decideNew},
		{p("restored", "unreachable"), decideWait},
		{p("restored", "data"), decideWait},
		{p("restored", "etcd"), decideJoin},
		// A peer that said it is starting the new cluster counts as one.
		{p("starting", "blank"), decideNew},
		{p("starting", "unreachable"), decideWait},
	} {
		if got := decide(tc.states); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.states, got, tc.want)
		}
	}
}

// TestStartersStayStarters: a peer that said it is starting the new
// cluster stays one while silent or loading this cluster's data; not
// when it shows another cluster's data, serves etcd, or says blank again
// (rebooted); a peer never heard starting gets no such credit.
func TestStartersStayStarters(t *testing.T) {
	starting := map[string]bool{}
	markStarters([]peerState{{Name: "a", State: "starting"}, {Name: "b", State: "blank"}}, starting, 0x826b)
	for _, tc := range []struct {
		in   peerState
		want string
	}{
		{peerState{Name: "a", State: "unreachable"}, "starting"},
		{peerState{Name: "a", State: "data"}, "starting"},
		{peerState{Name: "a", State: "data", ClusterID: 0x826b}, "starting"},
		{peerState{Name: "a", State: "data", ClusterID: 0x1234}, "data"},
		{peerState{Name: "a", State: "etcd", ClusterID: 0x826b}, "etcd"},
		{peerState{Name: "b", State: "unreachable"}, "unreachable"},
		{peerState{Name: "a", State: "blank"}, "blank"},
		{peerState{Name: "a", State: "unreachable"}, "unreachable"}, // rebooted blank: no longer a starter
	} {
		states := []peerState{tc.in}
		markStarters(states, starting, 0x826b)
		if states[0].State != tc.want {
			t.Errorf("%+v: %s, want %s", tc.in, states[0].State, tc.want)
		}
	}
}

// TestForeignPeersStopAJoin: a member whose image names another cluster
// (another token, or initial cluster) than its peers run never joins
// them; peers of its own cluster, or not answering, do not stop it.
func TestForeignPeersStopAJoin(t *testing.T) {
	s := &self{Cluster: "c-new", WantID: 0x826b}
	if why := s.foreignPeers([]peerState{{Name: "etcd-2", State: "etcd", ClusterID: 0x826b}, {Name: "etcd-3", State: "unreachable"}}); why != "" {
		t.Errorf("own cluster refused: %s", why)
	}
	for _, st := range []string{"etcd", "data"} {
		if why := s.foreignPeers([]peerState{{Name: "etcd-2", State: st, ClusterID: 0x1234}}); !strings.Contains(why, "etcd-2 runs cluster 1234, but this image belongs to cluster 826b (token c-new): refusing to join another cluster") {
			t.Errorf("%s peer of another cluster: %q", st, why)
		}
	}
}

// TestForeignClusterIsNamed: a peer running another cluster ID than the
// one the data disk recorded stops this member; the same ID, or peers
// not answering, do not.
func TestForeignClusterIsNamed(t *testing.T) {
	same := []peerState{{Name: "etcd-2", State: "etcd", ClusterID: 0x826b}, {Name: "etcd-3", State: "unreachable"}}
	if why := foreignCluster("826b", same); why != "" {
		t.Errorf("same cluster refused: %s", why)
	}
	other := []peerState{{Name: "etcd-2", State: "etcd", ClusterID: 0x1234}}
	if why := foreignCluster("826b", other); !strings.Contains(why, "etcd-2 runs cluster 1234") {
		t.Errorf("another cluster: %q", why)
	}
	if why := foreignCluster("826b", []peerState{{Name: "etcd-2", State: "data"}}); why != "" {
		t.Errorf("a peer without an answer: %q", why)
	}
}

// TestRoutineLogLinesAreHeldBackUntilAFailure: a service's JSON info
// lines stay off the console (each costs a TCG boot CPU time), its
// warnings, milestones and plain lines reach it, and when the service
// fails the last routine lines are printed after all.
func TestRoutineLogLinesAreHeldBackUntilAFailure(t *testing.T) {
	out := captureConsole(t)
	dir := t.TempDir()
	prog := script(t, dir, "etcdish", `echo '{"level":"info","msg":"recognized and used environment variable"}'
echo '{"level":"warn","msg":"something to see"}'
echo '{"level":"info","msg":"ready to serve client requests"}'
echo 'a plain line'
echo '{"level":"info","msg":"routine-before-the-crash"}'
exit 3
`)
	s := newService(unit(t, "etcdish.service", "[Service]\nExecStart="+prog+"\nRestart=no\n"))
	_, exited := startProcess(t, s)
	<-exited
	waitUntil(t, 5*time.Second, "the held lines after the failure", func() bool { return strings.Contains(out.String(), "routine-before-the-crash") })
	console := out.String()
	for _, want := range []string{"something to see", "ready to serve client requests", "etcdish: a plain line", "the last 2 of 2 routine log lines"} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q:\n%s", want, console)
		}
	}
	if i, j := strings.Index(console, "recognized and used"), strings.Index(console, "held back"); i < j {
		t.Errorf("a routine line reached the console before the failure:\n%s", console)
	}
}

// startProcess starts s and returns its process and the channel closed
// when that process exits.
func startProcess(t *testing.T, s *service) (*exec.Cmd, chan struct{}) {
	t.Helper()
	if _, err := s.start(); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd, s.exited
}
