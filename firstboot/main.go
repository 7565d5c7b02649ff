package firstboot

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"etcdimg/firstboot/internal/console"
	"etcdimg/firstboot/slots"
	"etcdimg/internal/layout"
)

// Console prefixes every line firstboot prints; tests and operators grep
// for it.
const Console = console.Prefix

// Console lines that mark milestones, matched by tests and by `etcdimg up`.
const (
	MsgStopped  = console.Stopped
	MsgReady    = "ready"
	MsgPowerOff = "powering off"
	MsgReboot   = "rebooting"
)

// node is the state of the running appliance.
type node struct {
	mu       sync.Mutex
	services []*service
	dataDev  string // mounted at the data dir, or ""
	power    chan powerRequest
	// esp is the boot slots; trial is set while the running slot is on
	// trial, and gate is its gate once etcd runs.
	esp   *slots.ESP
	trial bool
	gate  *slots.Gate
	// stopWhy is why etcd does not run and will not until an operator
	// acts (stoppedWhy), for the node API's status.
	stopWhy string
	// ctx ends when power-off is requested, so that a boot step that
	// waits (for peers, say) gives way to the power button.
	ctx    context.Context
	cancel context.CancelFunc
}

// Main is /init. It never returns: the machine ends powered off.
func Main() {
	n := &node{power: make(chan powerRequest, 1)}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.watchSignals()
	defer func() {
		if r := recover(); r != nil {
			logf("panic: %v\n%s", r, debug.Stack())
			n.stopped(fmt.Errorf("internal error: %v", r))
		}
	}()
	logf("node binary running (pid %d)", os.Getpid())
	// Ctrl-Alt-Del would otherwise reboot at once, without stopping etcd
	// or syncing; with it off, the kernel sends PID 1 SIGINT, which is a
	// power-off like the ACPI button.
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF); err != nil {
		logf("ctrl-alt-del: %v", err)
	}
	startReaper()
	n.esp, n.trial = bootSlot()
	if err := n.boot(); err != nil {
		n.stopped(err)
	}
	n.shutdown(n.waitPower())
}

// powerRequest is a power-off, or a reboot.
type powerRequest struct {
	reason string
	reboot bool
}

// waitPower blocks until power-off is requested. The periodic wake-up
// keeps Go's deadlock detector from ever calling a waiting PID 1 stuck.
func (n *node) waitPower() powerRequest {
	for {
		select {
		case r := <-n.power:
			return r
		case <-time.After(time.Hour):
		}
	}
}

// step runs one boot step and prints it as one line with its duration.
func step(name string, fn func() (string, error)) error { return console.Step(name, fn) }

// stopped reports a boot that cannot go on, stops whatever was started,
// and waits for the power button; the data disk is left as it is.
func (n *node) stopped(err error) {
	logf("%s %v", MsgStopped, err)
	n.setStopped(fmt.Sprintf("the boot stopped: %v", err))
	n.mu.Lock()
	trial := n.trial
	n.mu.Unlock()
	if trial {
		n.failTrial(fmt.Sprintf("the boot stopped: %v", err))
		n.shutdown(n.waitPower())
	}
	logf("the data disk was not formatted or changed by this boot step; fix the config or the disk and boot again. Waiting for power-off.")
	n.shutdown(n.waitPower())
}

// shutdown stops the services, syncs and unmounts the data disk, and
// powers off or reboots. It never returns.
func (n *node) shutdown(req powerRequest) {
	if req.reboot {
		logf("%s (%s)", MsgReboot, req.reason)
	} else {
		logf("%s (%s)", MsgPowerOff, req.reason)
	}
	n.mu.Lock()
	services := n.services
	dev := n.dataDev
	n.mu.Unlock()
	for i := len(services) - 1; i >= 0; i-- {
		services[i].stop(30 * time.Second)
	}
	unix.Sync()
	if dev != "" {
		if err := unix.Unmount(layout.DataMount, 0); err != nil {
			logf("unmount %s: %v; remounting read-only", layout.DataMount, err)
			unix.Mount("", layout.DataMount, "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
		} else {
			logf("unmounted %s (%s)", layout.DataMount, dev)
		}
	}
	unix.Sync()
	cmd, what := unix.LINUX_REBOOT_CMD_POWER_OFF, "power off"
	if req.reboot {
		cmd, what = unix.LINUX_REBOOT_CMD_RESTART, "reboot"
	}
	logf("%s", what)
	for {
		if err := unix.Reboot(cmd); err != nil {
			logf("%s: %v", what, err)
		}
		time.Sleep(time.Second)
	}
}

// watchSignals turns the signals a PID 1 gets (SIGTERM, SIGPWR, SIGINT
// from ctrl-alt-del) into a power-off request.
func (n *node) watchSignals() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGPWR, syscall.SIGINT)
	console.Go("signals", func() {
		for s := range sig {
			n.requestPower("signal " + s.String())
		}
	})
}

func (n *node) requestPower(reason string) { n.request(powerRequest{reason: reason}) }

// requestReboot stops the member as a power-off does, then reboots.
func (n *node) requestReboot(reason string) { n.request(powerRequest{reason: reason, reboot: true}) }

func (n *node) request(r powerRequest) {
	select {
	case n.power <- r:
	default:
	}
	n.cancel()
}

// logf prints one line to the console, stamped with the time since the
// kernel started.
func logf(format string, args ...any) { console.Logf(format, args...) }
