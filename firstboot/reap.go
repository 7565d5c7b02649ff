package firstboot

import (
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"etcdimg/firstboot/internal/console"

	"golang.org/x/sys/unix"
)

// reaper collects the exit status of orphans: processes whose parent died
// are re-parented to PID 1, and stay zombies until it waits for them. It
// never waits for a service's own process, whose status its supervisor's
// Wait must get: spawn records those in own, under mu, before anyone
// could see them exit.
var reaper = struct {
	mu  sync.Mutex
	own map[int]bool
}{own: map[int]bool{}}

// reapOrphans waits for every exited child that is not a service's.
// It returns the PIDs reaped.
func reapOrphans() []int {
	reaper.mu.Lock()
	defer reaper.mu.Unlock()
	var reaped []int
	for _, pid := range zombieChildren(os.Getpid()) {
		if reaper.own[pid] {
			continue
		}
		var ws unix.WaitStatus
		if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err == nil && got == pid {
			reaped = append(reaped, pid)
		}
	}
	return reaped
}

// zombieChildren lists the zombie processes whose parent is ppid.
func zombieChildren(ppid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 || f[0] != "Z" {
			continue
		}
		if p, _ := strconv.Atoi(f[1]); p == ppid {
			out = append(out, pid)
		}
	}
	return out
}

// startReaper reaps orphans on every SIGCHLD, and every 10 s in case a
// signal was coalesced.
func startReaper() {
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, syscall.SIGCHLD)
	console.Go("reaper", func() {
		for {
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
			}
			reapOrphans()
		}
	})
}
