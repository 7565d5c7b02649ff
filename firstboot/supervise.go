package firstboot

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"etcdimg/firstboot/internal/console"
	"etcdimg/ignition/ign"
)

// notifyDir holds the sd_notify sockets of Type=notify services.
const notifyDir = "/run/etcdimg"

// service supervises one unit: it runs ExecStart in its own process group,
// restarts it as Restart= says, and reports readiness from NOTIFY_SOCKET.
type service struct {
	unit *Unit

	mu        sync.Mutex
	cmd       *exec.Cmd
	exited    chan struct{} // closed when the current process has exited
	startedAt time.Time
	held      *heldLines    // the current process's routine log lines
	relayed   chan struct{} // closed when its output is all read
	stopping  bool
	wake      chan struct{} // closed by stop, to end a restart delay
	ready     bool
	starts    int
	// explain, when set, has words for the console after an output line
	// that says why the service stopped and what heals it.
	explain func(line string) string
	// beforeRestart, when set, runs after the process exited and before
	// it is started again: env is added to the next start's environment
	// (a later value wins), and a stop reason ends the restarts.
	beforeRestart func() (env []string, stop string)
}

func newService(u *Unit) *service { return &service{unit: u, wake: make(chan struct{})} }

// start launches the unit and supervises it in the background. It does
// not wait for readiness: an etcd member reports ready only once the
// cluster has quorum, which may need members that are still booting.
func (s *service) start() (string, error) {
	env, err := s.environment()
	if err != nil {
		return "", err
	}
	if s.unit.Type == "notify" {
		sock, err := s.listenNotify()
		if err != nil {
			return "", err
		}
		env = append(env, "NOTIFY_SOCKET="+sock)
	}
	if s.unit.LimitNOFILE > 0 {
		// Children inherit PID 1's limit; services start one at a time.
		lim := &unix.Rlimit{Cur: s.unit.LimitNOFILE, Max: s.unit.LimitNOFILE}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, lim); err != nil {
			return "", fmt.Errorf("LimitNOFILE=%d: %w", s.unit.LimitNOFILE, err)
		}
	}
	if err := s.spawn(env); err != nil {
		return "", err
	}
	pid := s.pid()
	s.mu.Lock()
	exited := s.exited
	s.mu.Unlock()
	console.Go(s.unit.Name, func() { s.supervise(env) })
	if s.unit.Type == "oneshot" {
		// A oneshot unit is done when its process is: the next unit
		// starts only after it, as systemd orders them.
		<-exited
		s.mu.Lock()
		state := s.cmd.ProcessState
		s.mu.Unlock()
		if state == nil || !state.Success() {
			return "", fmt.Errorf("pid %d: %s", pid, state)
		}
		return fmt.Sprintf("pid %d: %s: finished", pid, strings.Join(s.unit.ExecStart, " ")), nil
	}
	return fmt.Sprintf("pid %d: %s", pid, strings.Join(s.unit.ExecStart, " ")), nil
}

func (s *service) environment() ([]string, error) {
	env := []string{"PATH=/usr/bin:/bin", "HOME=/root"}
	for _, f := range s.unit.EnvironmentFile {
		data, err := os.ReadFile(f.Path)
		if err != nil {
			if f.Optional && os.IsNotExist(err) {
				continue
			}
			return nil, fmt.Errorf("EnvironmentFile=%s: %w", f.Path, err)
		}
		vars, err := ign.ParseEnvFile(data)
		if err != nil {
			return nil, fmt.Errorf("EnvironmentFile=%s: %w", f.Path, err)
		}
		env = append(env, vars...)
	}
	return append(env, s.unit.Environment...), nil
}

func (s *service) spawn(env []string) error {
	cmd := exec.Command(s.unit.ExecStart[0], s.unit.ExecStart[1:]...)
	cmd.Env = env
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// An os.Pipe rather than StdoutPipe: the relay reads to EOF on its
	// own, so Wait never cuts the last lines of a dying process short.
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	// The reaper must not take this child's exit status from Wait: it
	// waits until the child is recorded as ours.
	reaper.mu.Lock()
	err = cmd.Start()
	if err == nil {
		reaper.own[cmd.Process.Pid] = true
	}
	reaper.mu.Unlock()
	pw.Close()
	if err != nil {
		pr.Close()
		return fmt.Errorf("%s: %w", s.unit.ExecStart[0], err)
	}
	exited := make(chan struct{})
	s.mu.Lock()
	s.cmd, s.exited, s.startedAt = cmd, exited, time.Now()
	s.starts++
	s.mu.Unlock()
	console.Go(s.unit.Name+" forget", func() {
		<-exited
		reaper.mu.Lock()
		delete(reaper.own, cmd.Process.Pid)
		reaper.mu.Unlock()
	})
	held := &heldLines{}
	relayed := make(chan struct{})
	s.mu.Lock()
	s.held, s.relayed = held, relayed
	s.mu.Unlock()
	console.Go(s.unit.Name+" output", func() {
		defer close(relayed)
		relay(strings.TrimSuffix(s.unit.Name, ".service"), pr, held, s.explain)
		pr.Close()
	})
	return nil
}

// Restart backoff: RestartSec doubles after each failure in a row, up to
// maxBackoff; a run that lasted stableAfter resets it.
const (
	maxBackoff  = time.Minute
	stableAfter = 30 * time.Second
)

// supervise waits for the process and restarts it as Restart= says, with
// backoff, until stop. Each process is waited for exactly once.
func (s *service) supervise(env []string) {
	delay := s.unit.RestartSec
	for {
		s.mu.Lock()
		cmd, exited, started, held, relayed := s.cmd, s.exited, s.startedAt, s.held, s.relayed
		s.mu.Unlock()
		err := cmd.Wait()
		close(exited)
		s.mu.Lock()
		stopping := s.stopping
		s.ready = false
		s.mu.Unlock()
		if stopping {
			logf("%s: stopped (%v)", s.unit.Name, exitText(err))
			return
		}
		failed := err != nil
		if s.beforeRestart != nil {
			// It judges by the process's last lines: all of them are
			// read first (the relay ends at the pipe's end), however
			// slow the console.
			<-relayed
		}
		if failed {
			// The routine lines the console was spared are what an
			// operator needs now: print the last of them.
			select {
			case <-relayed:
			case <-time.After(time.Second):
			}
			held.dump(strings.TrimSuffix(s.unit.Name, ".service"))
		}
		restart := s.unit.Restart == "always" || (s.unit.Restart == "on-failure" && failed)
		if s.unit.Type == "oneshot" && !failed {
			logf("%s: finished", s.unit.Name)
			return
		}
		if !restart {
			logf("%s: exited (%s); Restart=%s, not restarting", s.unit.Name, exitText(err), s.unit.Restart)
			return
		}
		if s.beforeRestart != nil {
			add, stop := s.beforeRestart()
			if stop != "" {
				logf("%s: exited (%s); not restarting: %s", s.unit.Name, exitText(err), stop)
				return
			}
			env = append(slices.Clone(env), add...)
		}
		if time.Since(started) >= stableAfter {
			delay = s.unit.RestartSec
		}
		// Respawn until a process runs: a failed spawn is retried with the
		// same backoff, and never waited for.
		for {
			logf("%s: exited (%s); restarting in %s", s.unit.Name, exitText(err), delay)
			if !s.sleep(delay) {
				return
			}
			delay = min(max(2*delay, 100*time.Millisecond), maxBackoff)
			if err = s.spawn(env); err == nil {
				break
			}
			logf("%s: restart failed: %v", s.unit.Name, err)
		}
	}
}

// sleep waits d, or less if the service is stopped meanwhile; it reports
// whether to go on.
func (s *service) sleep(d time.Duration) bool {
	s.mu.Lock()
	wake := s.wake
	s.mu.Unlock()
	select {
	case <-time.After(d):
	case <-wake:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.stopping
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func (s *service) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// stop sends SIGTERM to the service's process group and waits; after
// timeout it sends SIGKILL.
func (s *service) stop(timeout time.Duration) {
	s.mu.Lock()
	if !s.stopping {
		s.stopping = true
		close(s.wake)
	}
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	logf("%s: stopping (SIGTERM to pid %d)", s.unit.Name, cmd.Process.Pid)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(timeout):
		logf("%s: still running after %s; SIGKILL", s.unit.Name, timeout)
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// listenNotify opens the unit's sd_notify socket and reports READY=1 on
// the console.
func (s *service) listenNotify() (string, error) {
	if err := os.MkdirAll(notifyDir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(notifyDir, s.unit.Name+".notify")
	os.Remove(path)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return "", fmt.Errorf("notify socket: %w", err)
	}
	console.Go(s.unit.Name+" notify", func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				if line == "READY=1" {
					s.mu.Lock()
					first := !s.ready
					s.ready = true
					s.mu.Unlock()
					if first {
						logf("%s: %s", s.unit.Name, MsgReady)
					}
				}
			}
		}
	})
	return path, nil
}

// serialOut is where service output goes: the serial console.
var serialOut io.Writer = os.Stdout

// maxLine is the longest line relayed whole; a longer one is cut, and
// the rest of it dropped, but the relay never stops reading: a service
// whose output is not read would block, or die of SIGPIPE.
const maxLine = 64 << 10

// relay copies a service's output to the console, one prefixed line at a
// time, until EOF. Routine lines of a JSON log (level debug or info, and
// none of the milestones an operator watches for) are held back instead:
// every line written to the emulated serial port costs the boot CPU time
// (etcd's 80 start-up lines took about half a second of a TCG boot), and
// the last of them are printed when the service fails.
//
// explain, when set, is asked about every line; what it says follows the
// line on the console as firstboot's.
func relay(prefix string, r io.Reader, held *heldLines, explain func(string) string) {
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, isPrefix, err := br.ReadLine()
		if len(line) > 0 || (err == nil && !isPrefix) {
			cut := ""
			if isPrefix {
				cut = " [line cut at 64 KiB]"
			}
			if held != nil && routine(line) {
				held.add(fmt.Sprintf("%s%s", line, cut))
			} else {
				fmt.Fprintf(serialOut, "%s: %s%s\n", prefix, line, cut)
			}
			if explain != nil {
				if words := explain(string(line)); words != "" {
					logf("%s", words)
				}
			}
		}
		for isPrefix && err == nil {
			_, isPrefix, err = br.ReadLine()
		}
		if err != nil {
			io.Copy(io.Discard, r)
			return
		}
	}
}

// milestones are the messages of a routine level that still reach the
// console: what an operator reads to see a member form, join, lead and
// serve.
var milestones = []string{
	"ready to serve client requests", "serving client traffic securely",
	"elected leader", "lost leader", "became leader",
	"added member", "removed member", "published local member",
	"restore", "enabled authentication", "starting an etcd server",
}

// routine reports whether line is a JSON log line of level debug or
// info that is no milestone.
func routine(line []byte) bool {
	if len(line) == 0 || line[0] != '{' {
		return false
	}
	var l struct{ Level, Msg string }
	if json.Unmarshal(line, &l) != nil || (l.Level != "info" && l.Level != "debug") {
		return false
	}
	for _, m := range milestones {
		if strings.Contains(l.Msg, m) {
			return false
		}
	}
	return true
}

// heldLines keeps the last routine lines of a service's run.
type heldLines struct {
	mu    sync.Mutex
	lines []string
	total int
}

const maxHeld = 100

func (h *heldLines) add(line string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.total++
	if len(h.lines) == maxHeld {
		h.lines = h.lines[1:]
	}
	h.lines = append(h.lines, line)
}

// dump prints the held lines to the console, once.
func (h *heldLines) dump(prefix string) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.lines) == 0 {
		return
	}
	fmt.Fprintf(serialOut, "%s: the last %d of %d routine log lines, held back from the console while it ran:\n", prefix, len(h.lines), h.total)
	for _, l := range h.lines {
		fmt.Fprintf(serialOut, "%s: %s\n", prefix, l)
	}
	h.lines, h.total = nil, 0
}
