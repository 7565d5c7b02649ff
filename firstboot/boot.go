package firstboot

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"etcdimg/firstboot/datadisk"
	"etcdimg/firstboot/internal/console"
	"etcdimg/firstboot/internal/kernelfs"
	"etcdimg/firstboot/join"
	"etcdimg/firstboot/network"
	"etcdimg/firstboot/platform"
	"etcdimg/ignition/ign"
	"etcdimg/internal/layout"
)

// state is what the boot's steps learn and hand on, one step to the
// next.
type state struct {
	n        *node
	platform *platform.Platform
	leased   netip.Addr // a cloud member's address, from DHCP
	cfg      ign.Config
	cfgFrom  string // where the config came from, as ReadConfig says
	units    []*Unit
	netFiles []network.File
	netErr   error // reading the .network files; a step that needs them reports it
	clocks   []network.ClockSource
	floor    time.Time // the clock is never set before it
	me       *join.Self
	// formatted is set when this boot formatted the data disk.
	formatted bool
	// grew is set when this boot grew the data disk's file system.
	grew    bool
	hasData bool
	owner   datadisk.Marker
	plan    *join.Plan
	// slotTiming is the member's config, for the trial's settings.
	slotTiming *ign.Member
}

// A bootStep is one named step of the boot. Each prints one console line
// with its name, its detail and its duration, or its error; the boot
// stops at the first error. Everything that can refuse the config comes
// before anything touches a disk.
type bootStep struct {
	name string
	// title, when set, is the console line's name instead of name.
	title func(*state) string
	// when, when set, says whether the step runs on this boot.
	when func(*state) bool
	run  func(*state) (string, error)
	// quiet steps print no line of their own: preparations, and steps
	// whose parts print theirs. Their error stops the boot as it is.
	quiet bool
}

// bootSteps are the boot, in order.
var bootSteps = []bootStep{
	// The initramfs's /init mounted /proc, /sys and /dev already.
	{name: "mount kernel file systems", run: func(*state) (string, error) { return kernelfs.Mount() }},
	{name: "watch the power button", quiet: true, run: watchPower},
	{name: "detect the platform", quiet: true, run: detectPlatform},
	// Which slot booted, and whether it is on trial: a trial boot that
	// stops anywhere after this reboots, spending a try.
	{name: "check boot slot", run: checkSlot},
	// A cloud instance learns its address by DHCP, and only then can it
	// ask the metadata service for its config.
	{name: "configure network (platform)", when: onCloud, run: leaseAddress,
		title: func(st *state) string { return "configure network (" + st.platform.Name + ")" }},
	{name: "read config", run: readConfig},
	{name: "check units", run: checkUnits},
	{name: "apply config", run: applyConfig},
	{name: "set hostname", run: func(*state) (string, error) { return network.SetHostname() }},
	// The config's .network files: the static address to apply, or on a
	// cloud the address the lease must match; and the NTP servers.
	{name: "read network files", quiet: true, run: readNetworkFiles},
	{name: "check address", when: onCloud, run: checkAddress},
	{name: "report ready", when: reportsReady, run: reportReady},
	{name: "configure network", when: notOnCloud, run: configureNetwork},
	// Certificates and leases need the right time before etcd starts.
	{name: "choose clock sources", quiet: true, run: chooseClocks},
	{name: "sync clock", run: syncClock},
	{name: "keep the clock", quiet: true, when: haveClocks, run: keepClock},
	{name: "read member identity", quiet: true, run: readMember},
	{name: "serve node API", run: serveNodeAPI},
	{name: "prepare data disk", run: prepareDataDisk},
	{name: "check data disk", run: checkDataDisk},
	// A data disk enlarged while the member was off: its file system
	// grows to fill it, and the quota (decide cluster state) with it.
	{name: "grow data disk", quiet: true, run: growDataDisk},
	{name: "decide cluster state", run: decideClusterState},
	// Each unit's start is a line of its own: "start etcd.service".
	{name: "start units", quiet: true, run: startUnits},
	{name: "watch the trial", when: onTrial, run: watchTrial},
}

// boot runs the boot's steps. Everything that can refuse the config
// happens before anything touches a disk.
func (n *node) boot() error {
	st := &state{n: n}
	for _, s := range bootSteps {
		if s.when != nil && !s.when(st) {
			continue
		}
		if s.quiet {
			if _, err := s.run(st); err != nil {
				return err
			}
			continue
		}
		title := s.name
		if s.title != nil {
			title = s.title(st)
		}
		if err := step(title, func() (string, error) { return s.run(st) }); err != nil {
			return err
		}
	}
	return nil
}

func onCloud(st *state) bool      { return st.platform.Cloud }
func notOnCloud(st *state) bool   { return !st.platform.Cloud }
func reportsReady(st *state) bool { return st.platform.Cloud && st.platform.ReportsReady() }
func haveClocks(st *state) bool   { return len(st.clocks) > 0 }

// watchPower turns the ACPI power button into a power-off request; a
// machine without one is powered off with a signal.
func watchPower(st *state) (string, error) {
	if err := watchPowerButton(func() { st.n.requestPower("ACPI power button") }); err != nil {
		logf("power button: %v; power off with a signal instead", err)
	}
	return "", nil
}

func detectPlatform(st *state) (string, error) {
	st.platform = platform.Detect()
	return "", nil
}

func leaseAddress(st *state) (string, error) {
	var what string
	var err error
	st.leased, what, err = network.DHCP(st.n.ctx)
	return what, err
}

func readConfig(st *state) (string, error) {
	var err error
	st.cfg, st.cfgFrom, err = st.platform.ReadConfig(st.n.ctx)
	return st.cfgFrom, err
}

func checkUnits(st *state) (string, error) {
	var err error
	st.units, err = enabledUnits(st.cfg)
	if err != nil {
		return "", err
	}
	var names []string
	for _, u := range st.units {
		names = append(names, u.Name)
	}
	return strings.Join(names, ", "), nil
}

func applyConfig(st *state) (string, error) {
	return fmt.Sprintf("%d files", len(st.cfg.Storage.Files)), Apply(st.cfg, "/")
}

func readNetworkFiles(st *state) (string, error) {
	st.netFiles, st.netErr = network.ReadFiles()
	return "", nil
}

func checkAddress(st *state) (string, error) {
	if st.netErr != nil {
		return "", st.netErr
	}
	return network.CheckLeased(st.leased, st.netFiles)
}

func reportReady(st *state) (string, error) { return st.platform.ReportReady(st.n.ctx) }

func configureNetwork(st *state) (string, error) {
	if st.netErr != nil {
		return "", st.netErr
	}
	return network.Configure(st.netFiles)
}

// chooseClocks picks the clock sources, the platform's own and the
// config's NTP servers, and the floor: the clock is never set to before
// the image was built.
func chooseClocks(st *state) (string, error) {
	var ntp []netip.Addr
	for _, nf := range st.netFiles {
		ntp = append(ntp, nf.NTP...)
	}
	st.clocks, st.floor = st.platform.ClockSources(ntp), network.ClockFloor("/")
	return "", nil
}

func syncClock(st *state) (string, error) { return network.SyncClock(st.clocks, st.floor) }

func keepClock(st *state) (string, error) {
	console.Go("clock", func() { network.KeepClock(st.n.ctx, st.clocks, st.floor, 15*time.Minute) })
	return "", nil
}

func readMember(st *state) (string, error) {
	var err error
	if st.me, err = join.ReadSelf("/"); err != nil {
		return "", fmt.Errorf("read member identity: %w", err)
	}
	return "", nil
}

// diskOwner is the member the data disk is for.
func (st *state) diskOwner() datadisk.Owner {
	return datadisk.Owner{Cluster: st.me.Cluster, Member: st.me.Name, Restoring: st.me.Restore != nil}
}

func prepareDataDisk(st *state) (string, error) {
	dev, what, formatted, err := datadisk.Prepare(layout.DataMount, st.diskOwner(), deviceWindowFor(st.cfgFrom))
	if err == nil {
		st.n.mu.Lock()
		st.n.dataDev = dev
		st.n.mu.Unlock()
		st.formatted = formatted
	}
	return what, err
}

func checkDataDisk(st *state) (string, error) {
	var detail string
	var err error
	if st.hasData, st.owner, detail, err = datadisk.Claim(st.diskOwner()); err != nil {
		return "", err
	}
	if st.formatted {
		// The new file system is mounted and marked: the first
		// format is over, and no longer to be redone.
		if err := datadisk.ClearIntent(st.n.dataDev); err != nil {
			return "", fmt.Errorf("clear the first-format record: %w", err)
		}
	}
	return detail, nil
}

// growDataDisk grows the claimed data disk's file system when the disk
// was enlarged, and says so. A grow that fails leaves the file system as
// it was (the kernel resizes in one step, journaled) and stops nothing:
// the member boots at its old size and says why.
func growDataDisk(st *state) (string, error) {
	said, err := datadisk.Grow(st.n.dataDev, layout.DataMount)
	switch {
	case err != nil:
		logf("%v; booting with the data disk's file system at its old size", err)
	case said != "":
		logf("%s", said)
		st.grew = true
	}
	return said, nil
}

func decideClusterState(st *state) (string, error) {
	var err error
	if st.plan, err = st.me.Decide(st.n.ctx, st.hasData); err != nil {
		return "", err
	}
	env := st.plan.Env
	if quota, total, err := datadisk.FitQuota(layout.DataMount, st.me.Quota); err == nil && quota < st.me.Quota {
		env = append(env, fmt.Sprintf("ETCD_QUOTA_BACKEND_BYTES=%d", quota))
		logf("backend quota %d MiB lowered to %d MiB: the data disk holds %d MiB, and keeps %d MiB for the WAL and snapshots", st.me.Quota>>20, quota>>20, total>>20, datadisk.QuotaReserve>>20)
	} else if err == nil && st.grew {
		logf("backend quota %d MiB, the spec's, now that the data disk holds %d MiB", quota>>20, total>>20)
	}
	if len(env) > 0 {
		if err := writeRuntimeEnv(env); err != nil {
			return "", err
		}
	}
	return st.plan.Detail, nil
}

// startUnits starts the config's units in order, each a step of its
// own; beside etcd it starts what needs etcd up (join.AfterStart).
func startUnits(st *state) (string, error) {
	for _, u := range st.units {
		s := newService(u)
		if u.Name == ign.EtcdUnitName {
			st.me.KeepVerdict = datadisk.MarkRefused
			g := st.me.NewCorruptionGuard()
			s.explain = g.Line
			s.beforeRestart = func() ([]string, string) {
				env, stop := g.BeforeRestart(st.n.ctx)
				if stop != "" {
					st.n.setStopped("etcd stopped for good: " + stop)
				}
				return env, stop
			}
		}
		st.n.mu.Lock()
		st.n.services = append(st.n.services, s)
		st.n.mu.Unlock()
		if err := step("start "+u.Name, s.start); err != nil {
			return "", err
		}
		if u.Name == ign.EtcdUnitName {
			recorded := ""
			if st.hasData {
				recorded = st.owner.ClusterID
			}
			st.me.AfterStart(st.n.ctx, st.plan, recorded, func(why string) {
				logf("%s %s", MsgStopped, why)
				s.stop(30 * time.Second)
			})
		}
	}
	return "", nil
}

// deviceWindowFor is the data disk's device window for a config read
// from source (as ReadConfig describes it): short for a machine QEMU
// launched with its config on fw_cfg, whose disks are there from
// power-on.
func deviceWindowFor(source string) time.Duration {
	if platform.FromFwCfg(source) {
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
