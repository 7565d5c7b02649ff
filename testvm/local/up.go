package local

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"etcdimg/cluster"
	"etcdimg/cluster/health"
	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
	"etcdimg/testvm"
)

// UpOptions are `etcdimg up`'s: the built directory, the machines, and
// where to report.
type UpOptions struct {
	Cluster  *spec.Cluster
	Dir      outdir.Layout // its images, PKI and run directory
	Accel    string
	MemoryMB int
	PortBase int
	DataSize spec.Size
	// Detach leaves the cluster running when it is not healthy in time
	// (to look at it); else Wait powers it off then.
	Detach bool
	// Exe runs the LAN switch (`Exe lan --socket`) and the host
	// services' relays (`Exe lan --relay`); default: this program.
	Exe            string
	Stdout, Stderr io.Writer
}

// DefaultDataSize is 1 GiB, sparse: the first format of a larger disk
// costs seconds of boot under TCG (4-5 s for 3 GiB against 1.5 s). A
// member whose disk cannot hold its quota plus 512 MiB lowers the quota to
// fit (and says so on its console), so disk-full never comes before
// etcd's own quota alarm; pass --data-size to keep the spec's quota.
func DefaultDataSize(*spec.Cluster) spec.Size { return spec.GiB }

// Check refuses, before anything boots, members too small to run: less
// than 128 MiB of RAM, or a data disk under 256 MiB.
func (o UpOptions) Check() error {
	if o.MemoryMB < 128 {
		return fmt.Errorf("--memory %d: a member needs at least 128 MiB", o.MemoryMB)
	}
	if o.DataSize < 256*spec.MiB {
		return fmt.Errorf("--data-size %s: a data disk needs at least 256MiB", o.DataSize)
	}
	return nil
}

// Booted is a cluster Up started: its state, and its etcd API through
// the forwarded ports with the admin certificate.
type Booted struct {
	State   *State
	Etcd    *cluster.Etcd
	Started time.Time // when the first machine started
	o       UpOptions
}

// Up boots every member of the built directory on one virtual LAN, under
// the run directory's lock, and writes the tool configs for the
// forwarded ports. A cluster that fails to start is powered off again.
// It reports the LAN's host services and the members on o.Stdout.
func Up(o UpOptions) (*Booted, error) {
	c, dir, w := o.Cluster, o.Dir, o.Stdout
	var members []MemberSpec
	for _, m := range c.Members {
		img := dir.Image(m.Name)
		if !render.Exists(img) {
			return nil, fmt.Errorf("%s is missing; run `etcdimg build --out %s` first", img, dir.Dir())
		}
		members = append(members, MemberSpec{Name: m.Name, IP: m.Addr(), Image: img})
	}
	exe := o.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	var reserved []netip.Addr
	if gw, err := netip.ParseAddr(c.Network.Gateway); err == nil {
		reserved = append(reserved, gw)
	}
	services := LANServices(c)
	lock, err := LockDir(dir)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	st, err := Boot(Options{
		RunDir: dir.RunDir(), DiskDir: dir.DisksDir(),
		Network: c.Prefix(), Reserved: reserved, Members: members,
		MemoryMB: o.MemoryMB, Accel: o.Accel, PortBase: o.PortBase, DataSize: int64(o.DataSize),
		SwitchCommand: []string{exe, "lan", "--socket"},
		HostServices:  services, RelayCommand: []string{exe, "lan", "--relay"},
		Out: w,
	})
	for _, hs := range services {
		fmt.Fprintf(w, "lan      %s (backup.s3.endpoint) is this host's %s\n", hs.LAN, hs.Host)
	}
	if err != nil {
		if st != nil {
			st.Down(30 * time.Second)
		}
		lock.Unlock()
		return nil, err
	}
	err = WriteToolConfigs(c, dir)
	lock.Unlock()
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "booting %d members (%s, %d MiB each, %s data disks) on a virtual LAN %s\n", len(st.Members), st.Accel, st.MemoryMB, o.DataSize, c.Network.CIDR)
	for _, m := range st.Members {
		fmt.Fprintf(w, "member   %-8s %-15s pid %-7d client https://127.0.0.1:%d  metrics http://127.0.0.1:%d  console %s\n",
			m.Name, m.IP, m.QEMU.PID, m.Client, m.Metrics, m.Console)
	}
	e, err := cluster.Admin(c, dir, Reach(dir))
	if err != nil {
		return nil, err
	}
	return &Booted{State: st, Etcd: e, Started: start, o: o}, nil
}

// Wait waits up to timeout until every member is healthy and prints the
// health table. When one is not, it prints the console tails of the
// members that are not (or of the one that stopped its boot) and, unless
// Detach, powers the cluster off. Once healthy, the cluster's ID is
// confirmed against the directory's record (a warning if it differs).
func (b *Booted) Wait(ctx context.Context, timeout time.Duration) error {
	st, o, w := b.State, b.o, b.o.Stdout
	rs := waitHealthy(ctx, b.Etcd, timeout, time.Second, st.gaveUp)
	health.Table(w, rs)
	if name, why, stopped := st.Stopped(); stopped && !health.Healthy(rs) {
		m, _ := st.Member(name)
		fmt.Fprintf(o.Stderr, "--- %s console tail (%s) ---\n%s\n", name, m.Console, testvm.TailFile(m.Console, 15))
		if !o.Detach {
			Down(w, o.Stderr, o.Dir)
		}
		return fmt.Errorf("up: %s stopped its boot: %s", name, why)
	}
	if !health.Healthy(rs) {
		for i, r := range rs {
			if !r.Healthy {
				fmt.Fprintf(o.Stderr, "--- %s console tail (%s) ---\n%s\n", r.Member, st.Members[i].Console, testvm.TailFile(st.Members[i].Console, 15))
			}
		}
		if !o.Detach {
			Down(w, o.Stderr, o.Dir)
		}
		return fmt.Errorf("up: the cluster was not healthy within %s (see the consoles above)", timeout)
	}
	if err := cluster.ConfirmClusterID(ctx, o.Cluster, o.Dir, b.Etcd); err != nil {
		fmt.Fprintf(o.Stderr, "warning: cluster ID: %v\n", err)
	}
	return nil
}

// Run waits until the cluster is healthy (Wait), says how to reach it,
// and, unless Detach, keeps it in the foreground (Attend).
func (b *Booted) Run(ctx context.Context, timeout time.Duration) error {
	if err := b.Wait(ctx, timeout); err != nil {
		return err
	}
	if b.ready(time.Now()); !b.o.Detach {
		b.Attend(ctx)
	}
	return nil
}

// ready says on Stdout that the cluster is healthy, how long it took
// until now, how to reach it, and how to stop it.
func (b *Booted) ready(now time.Time) {
	w, dir := b.o.Stdout, b.o.Dir
	fmt.Fprintf(w, "cluster %s healthy in %.1fs; etcdctl: source %s, or etcdimg etcdctl -- member list\n", b.o.Cluster.Name, now.Sub(b.Started).Seconds(), EtcdctlEnvFile(dir))
	if b.o.Detach {
		fmt.Fprintf(w, "running in the background; stop it with: etcdimg down --out %s\n", dir.Dir())
	} else {
		fmt.Fprintf(w, "press Ctrl-C to power the cluster off (or run with --detach)\n")
	}
}

// Attend keeps the cluster in the foreground: once ctx ends (Ctrl-C) or
// no member runs any more, it powers the cluster off.
func (b *Booted) Attend(ctx context.Context) {
	for ctx.Err() == nil {
		cur, err := Load(b.o.Dir)
		if err != nil || len(cur.Running()) == 0 {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	Down(b.o.Stdout, b.o.Stderr, b.o.Dir)
}

// waitHealthy asks each member every 250 ms until it is healthy, no
// longer, until all are or timeout passes; it ends early once gaveUp,
// asked every poll, reports that waiting is pointless (a member's QEMU
// exited, or a member stopped its boot and waits to be powered off).
func waitHealthy(ctx context.Context, e *cluster.Etcd, timeout, poll time.Duration, gaveUp func() bool) []health.Result {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() {
		for wctx.Err() == nil && !gaveUp() {
			select {
			case <-wctx.Done():
			case <-time.After(poll):
			}
		}
		cancel()
	}()
	return health.Wait(wctx, e.Endpoints, e.TLS, 2*time.Second, 250*time.Millisecond)
}

// gaveUp reports that a member's QEMU is gone or a member stopped its
// boot: the cluster will not become healthy by waiting.
func (st *State) gaveUp() bool {
	if len(st.Running()) != len(st.Members) {
		return true
	}
	_, _, stopped := st.Stopped()
	return stopped
}
