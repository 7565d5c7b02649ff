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

// TestTheRelayAsksForWordsOnEveryLine: a service's explain hook sees
// every line, routine or not, so that a line that says why etcd stopped
// is followed by what heals it.
func TestTheRelayAsksForWordsOnEveryLine(t *testing.T) {
	captureConsole(t)
	var seen []string
	in := "{\"level\":\"info\",\"msg\":\"routine\"}\n{\"level\":\"error\",\"msg\":\"checkInitialHashKV failed\"}\nplain\n"
	relay("etcd", strings.NewReader(in), &heldLines{}, func(line string) string {
		seen = append(seen, line)
		return ""
	})
	if len(seen) != 3 || !strings.Contains(seen[1], "checkInitialHashKV failed") {
		t.Errorf("explain saw %q", seen)
	}
}

// TestBeforeRestartAddsToTheEnvironmentOrStops: what a service's
// beforeRestart adds reaches the next start's environment, and a stop
// reason ends the restarts.
func TestBeforeRestartAddsToTheEnvironmentOrStops(t *testing.T) {
	out := captureConsole(t)
	dir := t.TempDir()
	prog := script(t, dir, "etcdish", "echo \"gates=$GATES\"\nexit 1\n")
	s := newService(unit(t, "etcdish.service", "[Service]\nExecStart="+prog+"\nEnvironment=GATES=first\nRestart=always\nRestartSec=50ms\n"))
	calls := 0
	stopped := make(chan struct{})
	s.beforeRestart = func() ([]string, string) {
		calls++
		if calls == 1 {
			return []string{"GATES=second"}, ""
		}
		close(stopped)
		return nil, "its data is damaged"
	}
	if _, err := s.start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("beforeRestart was not asked twice within 10 s")
	}
	waitUntil(t, 5*time.Second, "the second run's output", func() bool { return strings.Contains(out.String(), "gates=second") })
	time.Sleep(300 * time.Millisecond)
	if n := s.startCount(); n != 2 {
		t.Errorf("%d starts; want 2: the stop reason ends the restarts", n)
	}
	if !strings.Contains(out.String(), "gates=first") {
		t.Errorf("the first run's environment:\n%s", out.String())
	}
}
