package firstboot

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"etcdimg/firstboot/datadisk"
	"etcdimg/firstboot/internal/console"
	"etcdimg/firstboot/internal/kernelfs"
	"etcdimg/firstboot/network"
	"etcdimg/ignition/ign"
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
)

// configWait bounds how long a cloud member asks its metadata service
// for a config (or Azure's wire server for its goal state) before it
// stops, having touched no disk.
const configWait = 60 * time.Second

// node is the state of the running appliance.
type node struct {
	mu       sync.Mutex
	services []*service
	dataDev  string // mounted at the data dir, or ""
	power    chan string
	// ctx ends when power-off is requested, so that a boot step that
	// waits (for peers, say) gives way to the power button.
	ctx    context.Context
	cancel context.CancelFunc
}

// Main is /init. It never returns: the machine ends powered off.
func Main() {
	n := &node{power: make(chan string, 1)}
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
	if err := n.boot(); err != nil {
		n.stopped(err)
	}
	n.shutdown(n.waitPower())
}

// waitPower blocks until power-off is requested. The periodic wake-up
// keeps Go's deadlock detector from ever calling a waiting PID 1 stuck.
func (n *node) waitPower() string {
	for {
		select {
		case r := <-n.power:
			return r
		case <-time.After(time.Hour):
		}
	}
}

// boot runs the linear steps of a boot. Everything that can refuse the
// config happens before anything touches a disk.
func (n *node) boot() error {
	// The initramfs's /init mounted /proc, /sys and /dev already.
	if err := step("mount kernel file systems", func() (string, error) { return kernelfs.Mount() }); err != nil {
		return err
	}
	if err := watchPowerButton(func() { n.requestPower("ACPI power button") }); err != nil {
		logf("power button: %v; power off with a signal instead", err)
	}
	platform := platformFromCmdline(readCmdline())
	cloud := isCloud(platform)
	var leased netip.Addr
	if cloud {
		// A cloud instance learns its address by DHCP, and only then
		// can it ask the metadata service for its config.
		if err := step("configure network ("+platform+")", func() (string, error) {
			var err error
			var what string
			leased, what, err = network.DHCP(n.ctx)
			return what, err
		}); err != nil {
			return err
		}
	}
	var cfg ign.Config
	var cfgFrom string
	if err := step("read config", func() (string, error) {
		if cloud {
			raw, from, err := fetchWithRetry(n.ctx, configSources(platform), configWait, func(b []byte) error {
				var err error
				cfg, err = ign.Parse(b)
				return err
			})
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%s, %d bytes, Ignition %s", from, len(raw), cfg.Ignition.Version), nil
		}
		var err error
		cfg, cfgFrom, err = readConfig(configSources(platform))
		return cfgFrom, err
	}); err != nil {
		return err
	}
	var units []*Unit
	if err := step("check units", func() (string, error) {
		var err error
		units, err = enabledUnits(cfg)
		if err != nil {
			return "", err
		}
		var names []string
		for _, u := range units {
			names = append(names, u.Name)
		}
		return strings.Join(names, ", "), nil
	}); err != nil {
		return err
	}
	if err := step("apply config", func() (string, error) {
		return fmt.Sprintf("%d files", len(cfg.Storage.Files)), Apply(cfg, "/")
	}); err != nil {
		return err
	}
	if err := step("set hostname", network.SetHostname); err != nil {
		return err
	}
	// The config's .network files: the static address to apply, or on a
	// cloud the address the lease must match; and the NTP servers.
	netFiles, netErr := network.ReadFiles()
	if cloud {
		if err := step("check address", func() (string, error) {
			if netErr != nil {
				return "", netErr
			}
			return network.CheckLeased(leased, netFiles)
		}); err != nil {
			return err
		}
		if platform == layout.PlatformAzure {
			if err := step("report ready", func() (string, error) {
				return azureReportReady(n.ctx, metadataClient(layout.AzureWireServer), configWait)
			}); err != nil {
				return err
			}
		}
	} else if err := step("configure network", func() (string, error) {
		if netErr != nil {
			return "", netErr
		}
		return network.Configure(netFiles)
	}); err != nil {
		return err
	}
	// Certificates and leases need the right time before etcd starts.
	var ntp []netip.Addr
	for _, nf := range netFiles {
		ntp = append(ntp, nf.NTP...)
	}
	// The clock is never set to before the image was built.
	clocks, floor := network.ClockSources(platform, ntp), network.ClockFloor("/")
	if err := step("sync clock", func() (string, error) { return network.SyncClock(clocks, floor) }); err != nil {
		return err
	}
	if len(clocks) > 0 {
		goSafe("clock", func() { network.KeepClock(n.ctx, clocks, floor, 15*time.Minute) })
	}
	me, err := readSelf("/")
	if err != nil {
		return fmt.Errorf("read member identity: %w", err)
	}
	var formatted bool
	if err := step("prepare data disk", func() (string, error) {
		dev, what, f, err := datadisk.Prepare(layout.DataMount, datadisk.Owner{Cluster: me.Cluster, Member: me.Name, Restoring: me.Restore != nil}, deviceWindowFor(cfgFrom))
		if err == nil {
			n.mu.Lock()
			n.dataDev = dev
			n.mu.Unlock()
			formatted = f
		}
		return what, err
	}); err != nil {
		return err
	}
	var hasData bool
	var owner datadisk.Marker
	if err := step("check data disk", func() (string, error) {
		var detail string
		var err error
		if hasData, owner, detail, err = datadisk.Claim(datadisk.Owner{Cluster: me.Cluster, Member: me.Name, Restoring: me.Restore != nil}); err != nil {
			return "", err
		}
		if formatted {
			// The new file system is mounted and marked: the first
			// format is over, and no longer to be redone.
			if err := datadisk.ClearIntent(n.dataDev); err != nil {
				return "", fmt.Errorf("clear the first-format record: %w", err)
			}
		}
		return detail, nil
	}); err != nil {
		return err
	}
	var plan *joinPlan
	if err := step("decide cluster state", func() (string, error) {
		if hasData {
			plan = &joinPlan{Detail: "this member's etcd data is on the disk: etcd restarts from it"}
		} else {
			var err error
			if plan, err = me.bootstrapOrJoin(n.ctx); err != nil {
				return "", err
			}
			if plan.New && me.Restore != nil {
				what, err := me.restoreFromImage()
				if err != nil {
					if plan.Release != nil {
						plan.Release()
					}
					return "", err
				}
				plan.Detail += "; " + what
			}
			if plan.Release != nil {
				plan.Release()
			}
		}
		env := plan.Env
		if quota, total, err := datadisk.FitQuota(layout.DataMount, me.Quota); err == nil && quota < me.Quota {
			env = append(env, fmt.Sprintf("ETCD_QUOTA_BACKEND_BYTES=%d", quota))
			logf("backend quota %d MiB lowered to %d MiB: the data disk holds %d MiB, and keeps %d MiB for the WAL and snapshots", me.Quota>>20, quota>>20, total>>20, datadisk.QuotaReserve>>20)
		}
		if len(env) > 0 {
			if err := writeRuntimeEnv(env); err != nil {
				return "", err
			}
		}
		return plan.Detail, nil
	}); err != nil {
		return err
	}
	for _, u := range units {
		s := newService(u)
		n.mu.Lock()
		n.services = append(n.services, s)
		n.mu.Unlock()
		if err := step("start "+u.Name, s.start); err != nil {
			return err
		}
		if u.Name == ign.EtcdUnitName {
			if plan.Learner != 0 {
				// It ends once promoted, or at power-off.
				goSafe("promote", func() { _ = me.promote(n.ctx, plan.Learner) })
			}
			goSafe("record cluster ID", func() { me.recordClusterID(n.ctx) })
			goSafe("auth", func() { me.ensureAuth(n.ctx) })
			if hasData && owner.ClusterID != "" {
				// Checked beside etcd's start, not before it, so that a
				// cluster's restart does not wait on peers that are down:
				// etcd on data of another cluster cannot reach a quorum
				// (its peers refuse it), so it serves nothing meanwhile.
				goSafe("check cluster ID", func() {
					if why := me.watchClusterID(n.ctx, owner.ClusterID); why != "" {
						logf("%s %s", MsgStopped, why)
						s.stop(30 * time.Second)
					}
				})
			}
		}
	}
	return nil
}

// step runs one boot step and prints it as one line with its duration.
func step(name string, fn func() (string, error)) error { return console.Step(name, fn) }

// stopped reports a boot that cannot go on, stops whatever was started,
// and waits for the power button; the data disk is left as it is.
func (n *node) stopped(err error) {
	logf("%s %v", MsgStopped, err)
	logf("the data disk was not formatted or changed by this boot step; fix the config or the disk and boot again. Waiting for power-off.")
	n.shutdown(n.waitPower())
}

// shutdown stops the services, syncs and unmounts the data disk, and
// powers off. It never returns.
func (n *node) shutdown(reason string) {
	logf("%s (%s)", MsgPowerOff, reason)
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
	logf("power off")
	for {
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
			logf("power off: %v", err)
		}
		time.Sleep(time.Second)
	}
}

// watchSignals turns the signals a PID 1 gets (SIGTERM, SIGPWR, SIGINT
// from ctrl-alt-del) into a power-off request.
func (n *node) watchSignals() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGPWR, syscall.SIGINT)
	goSafe("signals", func() {
		for s := range sig {
			n.requestPower("signal " + s.String())
		}
	})
}

func (n *node) requestPower(reason string) {
	select {
	case n.power <- reason:
	default:
	}
	n.cancel()
}

// goSafe runs fn in a goroutine that cannot take PID 1 down: a panic is
// printed and the goroutine ends; the boot's own steps and the power
// path go on.
func goSafe(name string, fn func()) {
	go func() {
		defer func() {
			if r := recover(); r != nil {
				logf("panic in %s: %v\n%s", name, r, debug.Stack())
			}
		}()
		fn()
	}()
}

// logf prints one line to the console, stamped with the time since the
// kernel started.
func logf(format string, args ...any) { console.Logf(format, args...) }

var errNotFound = errors.New("not found")

// deviceWindowFor is the data disk's device window for a config read
// from source (as readConfig describes it): short for a machine QEMU
// launched with its config on fw_cfg, whose disks are there from
// power-on.
func deviceWindowFor(source string) time.Duration {
	if strings.HasPrefix(source, fwCfg{}.Name()+",") {
		return datadisk.LaunchedDeviceWait
	}
	return datadisk.DeviceWait
}

// writeRuntimeEnv writes etcd.service's environment overrides.
func writeRuntimeEnv(vars []string) error {
	if err := os.MkdirAll(filepath.Dir(layout.RuntimeEnvPath), 0o755); err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("# Written by firstboot at boot; overrides /etc/etcd/etcd.conf.\n")
	for _, kv := range vars {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&b, "%s=%q\n", k, v)
	}
	return os.WriteFile(layout.RuntimeEnvPath, []byte(b.String()), 0o644)
}
