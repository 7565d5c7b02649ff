package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/cluster"
	"etcdimg/cluster/health"
	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
	"etcdimg/pki"
	"etcdimg/testvm"
	"etcdimg/testvm/local"
)

// runDir and diskDir sit in the output directory: what a running cluster
// needs (consoles, sockets, state, the tool configs for its forwarded
// ports) and the data disks, kept across down and up.
func runDir(dir outdir.Layout) string  { return dir.RunDir() }
func diskDir(dir outdir.Layout) string { return dir.DisksDir() }

// loadBuilt reads the spec of an output directory that `build` wrote.
func loadBuilt(out string) (*spec.Cluster, outdir.Layout, error) {
	dir := outdir.Layout(out)
	if !render.Exists(dir.Spec()) {
		return nil, dir, fmt.Errorf("%s has no etcdimg.yaml; run `etcdimg build --out %s` first", out, out)
	}
	c, _, err := render.LoadSpec(render.Source{}, dir)
	return c, dir, err
}

// forwarded returns the local cluster's loopback ports by member, or nil
// when no cluster runs from dir under `up`.
func forwarded(dir outdir.Layout) map[string]local.MemberState {
	st, err := local.LoadState(runDir(dir))
	if err != nil {
		return nil
	}
	ports := map[string]local.MemberState{}
	for _, m := range st.Members {
		ports[m.Name] = m
	}
	return ports
}

// reach maps a member's port to where the operator's machine reaches it:
// the forwarded loopback port under `up`, else the member's own address.
func reach(dir outdir.Layout) render.Endpoint {
	ports := forwarded(dir)
	if ports == nil {
		return nil
	}
	return func(m spec.Member, port int) string {
		return "127.0.0.1:" + strconv.Itoa(ports[m.Name].HostPort(port))
	}
}

// endpoints are the members' client URLs, as reach says.
func endpoints(c *spec.Cluster, dir outdir.Layout) []health.Endpoint {
	ep := reach(dir)
	var eps []health.Endpoint
	for _, m := range c.Members {
		hp := m.IP + ":" + strconv.Itoa(layout.ClientPort)
		if ep != nil {
			hp = ep(m, layout.ClientPort)
		}
		eps = append(eps, health.Endpoint{Member: m.Name, URL: "https://" + hp})
	}
	return eps
}

// adminEtcd is the cluster's etcd API with the admin certificate.
func adminEtcd(c *spec.Cluster, dir outdir.Layout) (*cluster.Etcd, error) {
	tlsCfg, err := health.TLS(dir.PKIFile(pki.CACertFile), dir.PKIFile(pki.AdminCert), dir.PKIFile(pki.AdminKey))
	if err != nil {
		return nil, err
	}
	return &cluster.Etcd{Endpoints: endpoints(c, dir), TLS: tlsCfg}, nil
}

// builtEtcd is adminEtcd on the output directory that `build` wrote.
func builtEtcd(out string) (*cluster.Etcd, error) {
	c, dir, err := loadBuilt(out)
	if err != nil {
		return nil, err
	}
	return adminEtcd(c, dir)
}

// outFlag registers --out, the output directory every command reads.
func outFlag(c *cobra.Command, out *string) {
	c.Flags().StringVar(out, "out", outdir.Default, "output directory")
}

// localEtcdctlEnv and localPrometheus are the tool configs of a cluster
// under `up`, pointing at its forwarded ports. They live in the run
// directory, beside the state they depend on; render's own copies at the
// top of the output directory always point at the members' addresses.
func localEtcdctlEnv(dir outdir.Layout) string { return filepath.Join(runDir(dir), "etcdctl.env") }
func localPrometheus(dir outdir.Layout) string { return filepath.Join(runDir(dir), "prometheus.yml") }

// writeLocalToolConfigs writes etcdctl.env and prometheus.yml for the
// forwarded ports of the cluster under `up`.
func writeLocalToolConfigs(c *spec.Cluster, dir outdir.Layout) error {
	abs, err := filepath.Abs(dir.Dir())
	if err != nil {
		return err
	}
	ep := reach(dir)
	prom, err := render.Prometheus(c, ep, outdir.Layout(abs))
	if err != nil {
		return err
	}
	rules, err := render.Rules(c)
	if err != nil {
		return err
	}
	_, err = outdir.Write(runDir(dir), []outdir.File{
		{Path: filepath.Base(localEtcdctlEnv(dir)), Data: render.EtcdctlEnv(c, outdir.Layout(abs), ep), Mode: 0o644},
		{Path: filepath.Base(localPrometheus(dir)), Data: prom, Mode: 0o644},
		{Path: render.RulesFile, Data: rules, Mode: 0o644},
	})
	return err
}

// lockRun takes the run directory's lock for a command that changes the
// local cluster.
func lockRun(dir outdir.Layout) (*local.Lock, error) { return local.LockRunDir(runDir(dir)) }

func upCmd() *cobra.Command {
	var out, accel string
	var memory, portBase int
	var detach bool
	var timeout time.Duration
	var dataSize spec.Size
	c := &cobra.Command{
		Use:   "up",
		Short: "Boot every member in QEMU on one virtual LAN and wait until the cluster is healthy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, dir, err := loadBuilt(out)
			if err != nil {
				return err
			}
			if memory < 128 {
				return usageError{fmt.Errorf("--memory %d: a member needs at least 128 MiB", memory)}
			}
			if !cmd.Flags().Changed("data-size") {
				dataSize = defaultDataSize(c)
			}
			if dataSize < 256*spec.MiB {
				return usageError{fmt.Errorf("--data-size %s: a data disk needs at least 256MiB", dataSize)}
			}
			var members []local.MemberSpec
			for _, m := range c.Members {
				img := dir.Image(m.Name)
				if !render.Exists(img) {
					return fmt.Errorf("%s is missing; run `etcdimg build --out %s` first", img, out)
				}
				members = append(members, local.MemberSpec{Name: m.Name, IP: m.Addr(), Image: img})
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			var reserved []netip.Addr
			if gw, err := netip.ParseAddr(c.Network.Gateway); err == nil {
				reserved = append(reserved, gw)
			}
			services := lanServices(c)
			lock, err := lockRun(dir)
			if err != nil {
				return err
			}
			start := time.Now()
			st, err := local.Boot(local.Options{
				RunDir: runDir(dir), DiskDir: diskDir(dir),
				Network: c.Prefix(), Reserved: reserved, Members: members,
				MemoryMB: memory, Accel: accel, PortBase: portBase, DataSize: int64(dataSize),
				SwitchCommand: []string{exe, "lan", "--socket"},
				HostServices:  services, RelayCommand: []string{exe, "lan", "--relay"},
			})
			w := cmd.OutOrStdout()
			for _, hs := range services {
				fmt.Fprintf(w, "lan      %s (backup.s3.endpoint) is this host's %s\n", hs.LAN, hs.Host)
			}
			if err != nil {
				if st != nil {
					st.Down(30 * time.Second)
				}
				lock.Unlock()
				return err
			}
			err = writeLocalToolConfigs(c, dir)
			lock.Unlock()
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "booting %d members (%s, %d MiB each, %s data disks) on a virtual LAN %s\n", len(st.Members), st.Accel, st.MemoryMB, dataSize, c.Network.CIDR)
			for _, m := range st.Members {
				fmt.Fprintf(w, "member   %-8s %-15s pid %-7d client https://127.0.0.1:%d  metrics http://127.0.0.1:%d  console %s\n",
					m.Name, m.IP, m.QEMU.PID, m.Client, m.Metrics, m.Console)
			}
			e, err := adminEtcd(c, dir)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// Each member is asked every 250 ms until healthy, no longer,
			// and the wait ends early when a member's QEMU exits or a
			// member stops its boot (it would wait to be powered off).
			wctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			go func() {
				for wctx.Err() == nil && len(st.Running()) == len(st.Members) {
					if _, _, stopped := st.Stopped(); stopped {
						break
					}
					select {
					case <-wctx.Done():
					case <-time.After(time.Second):
					}
				}
				cancel()
			}()
			rs := health.Wait(wctx, e.Endpoints, e.TLS, 2*time.Second, 250*time.Millisecond)
			health.Table(w, rs)
			if name, why, stopped := st.Stopped(); stopped && !health.Healthy(rs) {
				m, _ := st.Member(name)
				fmt.Fprintf(os.Stderr, "--- %s console tail (%s) ---\n%s\n", name, m.Console, testvm.TailFile(m.Console, 15))
				if !detach {
					downAndReport(w, dir)
				}
				return fmt.Errorf("up: %s stopped its boot: %s", name, why)
			}
			if !health.Healthy(rs) {
				for i, r := range rs {
					if !r.Healthy {
						fmt.Fprintf(os.Stderr, "--- %s console tail (%s) ---\n%s\n", r.Member, st.Members[i].Console, testvm.TailFile(st.Members[i].Console, 15))
					}
				}
				if !detach {
					downAndReport(w, dir)
				}
				return fmt.Errorf("up: the cluster was not healthy within %s (see the consoles above)", timeout)
			}
			confirmClusterID(ctx, c, dir, e)
			fmt.Fprintf(w, "cluster %s healthy in %.1fs; etcdctl: source %s, or etcdimg etcdctl -- member list\n", c.Name, time.Since(start).Seconds(), localEtcdctlEnv(dir))
			if detach {
				fmt.Fprintf(w, "running in the background; stop it with: etcdimg down --out %s\n", out)
				return nil
			}
			fmt.Fprintf(w, "press Ctrl-C to power the cluster off (or run with --detach)\n")
			for ctx.Err() == nil {
				cur, err := local.LoadState(runDir(dir))
				if err != nil || len(cur.Running()) == 0 {
					break
				}
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			downAndReport(w, dir)
			return nil
		},
	}
	outFlag(c, &out)
	c.Flags().StringVar(&accel, "accel", "", "kvm or tcg (default: $"+testvm.AccelEnv+", else KVM when it works here, else TCG)")
	c.Flags().IntVar(&memory, "memory", 256, "guest RAM per member, MiB")
	c.Flags().IntVar(&portBase, "port-base", 40000, "member N's client port is BASE+100N+79, its metrics port BASE+100N+81")
	c.Flags().BoolVar(&detach, "detach", false, "leave the cluster running and return once it is healthy")
	c.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for a healthy cluster")
	c.Flags().Var(&dataSize, "data-size", "size of each new (sparse) data disk; a member lowers its backend quota to fit the disk less 512MiB")
	return c
}

// defaultDataSize is 1 GiB, sparse: the first format of a larger disk
// costs seconds of boot under TCG (4-5 s for 3 GiB against 1.5 s). A
// member whose disk cannot hold its quota plus 512 MiB lowers the quota to
// fit (and says so on its console), so disk-full never comes before
// etcd's own quota alarm; pass --data-size to keep the spec's quota.
func defaultDataSize(*spec.Cluster) spec.Size { return spec.GiB }

// downAndReport powers the local cluster off under the run directory's
// lock and removes the tool configs that pointed at it.
func downAndReport(w io.Writer, dir outdir.Layout) {
	lock, err := lockRun(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcdimg: %v\n", err)
		return
	}
	defer lock.Unlock()
	st, err := local.LoadState(runDir(dir))
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcdimg: %v\n", err)
		return
	}
	for _, line := range st.Down(time.Minute) {
		fmt.Fprintln(w, line)
	}
	os.Remove(localEtcdctlEnv(dir))
	os.Remove(localPrometheus(dir))
	os.Remove(filepath.Join(runDir(dir), render.RulesFile))
}

func downCmd() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "down",
		Short: "Power every member off (ACPI), wait, then stop QEMU; data disks are kept",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, dir, err := loadBuilt(out)
			if err != nil {
				return err
			}
			if _, err := local.LoadState(runDir(dir)); errors.Is(err, local.ErrNotRunning) {
				fmt.Fprintln(cmd.OutOrStdout(), "no cluster is running from", out)
				return nil
			} else if err != nil {
				return err
			}
			downAndReport(cmd.OutOrStdout(), dir)
			return nil
		},
	}
	outFlag(c, &out)
	return c
}

func statusCmd() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "status",
		Short: "List the members, their QEMU PIDs, ports and console logs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, dir, err := loadBuilt(out)
			if err != nil {
				return err
			}
			st, err := local.LoadState(runDir(dir))
			if errors.Is(err, local.ErrNotRunning) {
				fmt.Fprintf(cmd.OutOrStdout(), "not running (etcdimg up --out %s starts it)\n", out)
				return errors.New("status: not running")
			}
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			lan := "up"
			if !st.LANUp() {
				lan = "DOWN"
			}
			fmt.Fprintf(w, "started %s, %s, %d MiB per member, LAN switch pid %d (%s)\n", st.Started.Format(time.RFC3339), st.Accel, st.MemoryMB, st.Switch.PID, lan)
			fmt.Fprintf(w, "%-8s %-15s %-8s %-8s %-24s %-24s %s\n", "MEMBER", "IP", "PID", "STATE", "CLIENT", "METRICS", "CONSOLE")
			down := 0
			for _, m := range st.Members {
				state, pid := "running", strconv.Itoa(m.QEMU.PID)
				if !m.Running() {
					state, pid, down = "stopped", "-", down+1
				}
				fmt.Fprintf(w, "%-8s %-15s %-8s %-8s %-24s %-24s %s\n", m.Name, m.IP, pid, state,
					fmt.Sprintf("https://127.0.0.1:%d", m.Client), fmt.Sprintf("http://127.0.0.1:%d", m.Metrics), m.Console)
			}
			fmt.Fprintln(w, lastBackupLine(c, dir))
			if down > 0 {
				return fmt.Errorf("status: %d of %d members are not running", down, len(st.Members))
			}
			return nil
		},
	}
	outFlag(c, &out)
	return c
}

// lastBackupLine says when the cluster's last verified backup was taken,
// from the record the members keep in etcd.
func lastBackupLine(c *spec.Cluster, dir outdir.Layout) string {
	e, err := adminEtcd(c, dir)
	if err != nil {
		return "last backup: unknown (" + err.Error() + ")"
	}
	m, err := e.LastBackup(context.Background())
	switch {
	case err != nil:
		return "last backup: unknown (etcd: " + err.Error() + ")"
	case m == nil:
		return fmt.Sprintf("last backup: none yet (one every %s for the cluster)", c.Backup.Interval)
	}
	return fmt.Sprintf("last backup: %s, %s ago, by %s: revision %d, %d keys, %.1f MiB, verified, in %s", m.Name, time.Since(m.Time).Round(time.Second), m.Member, m.Revision, m.Keys, float64(m.Size)/(1<<20), strings.Join(m.Targets, " and "))
}

func healthCmd() *cobra.Command {
	var out string
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "health",
		Short: "Check every member over mTLS; print ENDPOINT, HEALTH, TOOK, ERROR; exit 1 if any is unhealthy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, dir, err := loadBuilt(out)
			if err != nil {
				return err
			}
			e, err := adminEtcd(c, dir)
			if err != nil {
				return err
			}
			rs := health.Check(context.Background(), e.Endpoints, e.TLS, timeout)
			health.Table(cmd.OutOrStdout(), rs)
			if health.Healthy(rs) {
				confirmClusterID(cmd.Context(), c, dir, e)
			}
			for _, w := range health.Expiring(context.Background(), e.Endpoints, e.TLS, time.Now(), health.ExpiryWindow) {
				fmt.Fprintf(os.Stderr, "warning: %s: rebuild and roll the members (a leaf is reissued within 30 days of its end), or make a new CA\n", w)
			}
			var bad []string
			for _, r := range rs {
				if !r.Healthy {
					bad = append(bad, fmt.Sprintf("%s (%s)", r.Member, r.URL))
				}
			}
			if len(bad) > 0 {
				return fmt.Errorf("health: unhealthy: %s", strings.Join(bad, ", "))
			}
			return nil
		},
	}
	outFlag(c, &out)
	c.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "per-member timeout")
	return c
}

func etcdctlCmd() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "etcdctl [--out DIR] -- ARGS",
		Short: "Run the built etcdctl with the admin certificate and every endpoint filled in",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, dir, err := loadBuilt(out)
			if err != nil {
				return err
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			node := filepath.Join(filepath.Dir(exe), "etcdnode")
			var urls []string
			for _, e := range endpoints(c, dir) {
				urls = append(urls, e.URL)
			}
			abs, _ := filepath.Abs(dir.Dir())
			a := outdir.Layout(abs)
			env := append(os.Environ(),
				"ETCDCTL_ENDPOINTS="+strings.Join(urls, ","),
				"ETCDCTL_CACERT="+a.PKIFile(pki.CACertFile),
				"ETCDCTL_CERT="+a.PKIFile(pki.AdminCert),
				"ETCDCTL_KEY="+a.PKIFile(pki.AdminKey),
			)
			if err := syscall.Exec(node, append([]string{"etcdctl"}, args...), env); err != nil {
				return fmt.Errorf("etcdctl: run %s: %w; build it with `make`", node, err)
			}
			return nil
		},
	}
	outFlag(c, &out)
	return c
}

// lanServices are the spec's endpoints that a local cluster's LAN hands
// to the host: an S3 endpoint at an address of the LAN that no member
// has is the same port on the host's loopback (where a test, or the
// operator, runs the S3 server).
func lanServices(c *spec.Cluster) []local.HostService {
	if c.Backup.S3 == nil {
		return nil
	}
	u, err := url.Parse(c.Backup.S3.Endpoint)
	if err != nil {
		return nil
	}
	ip, err := netip.ParseAddr(u.Hostname())
	if err != nil || !c.Prefix().Contains(ip) {
		return nil
	}
	for _, m := range c.Members {
		if m.Addr() == ip {
			return nil
		}
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	p, _ := strconv.Atoi(port)
	return []local.HostService{{LAN: netip.AddrPortFrom(ip, uint16(p)), Host: "127.0.0.1:" + port}}
}

// lanCmd runs the virtual LAN's switch; `up` starts it as its own
// process. With --relay it is one connection of a host service instead.
func lanCmd() *cobra.Command {
	var socket, relay string
	c := &cobra.Command{
		Use:    "lan --socket PATH",
		Short:  "Run the virtual LAN switch (started by up)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if relay != "" {
				// Standard output and error are the guest's connection:
				// an error must not be written into its stream.
				if err := testvm.Relay(relay); err != nil {
					os.Exit(1)
				}
				return nil
			}
			sw, err := testvm.ListenSwitch(socket)
			if err != nil {
				return err
			}
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
			go func() { <-sig; sw.Close() }()
			// `etcdimg chaos` partitions the LAN through this socket.
			go func() {
				if err := sw.ServeControl(testvm.ControlPath(socket)); err != nil {
					fmt.Fprintln(os.Stderr, err)
				}
			}()
			return sw.Serve()
		},
	}
	c.Flags().StringVar(&socket, "socket", "", "unix socket to listen on")
	c.Flags().StringVar(&relay, "relay", "", "relay standard input and output to this TCP address")
	return c
}

// confirmClusterID records that the cluster answering is the one the
// directory's images belong to (render.CheckClusterID), once it is
// healthy; from then on its ID is kept whatever the spec becomes. A
// cluster of another ID is said, not fatal here: replace and roll refuse
// it.
func confirmClusterID(ctx context.Context, c *spec.Cluster, dir outdir.Layout, e *cluster.Etcd) {
	live, err := liveClusterID(ctx, e)
	if err == nil {
		_, err = render.CheckClusterID(c, dir, live)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "warning: cluster ID: %v\n", err)
	}
}

// liveClusterID is the ID of the cluster that answers: the header of a
// member list (one request, not every member's status).
func liveClusterID(ctx context.Context, e *cluster.Etcd) (uint64, error) {
	list, err := e.MemberList(ctx)
	if err != nil {
		return 0, fmt.Errorf("member list: %w", err)
	}
	return list.Header.ClusterId, nil
}

// localState is the record of the cluster under `up` in dir.
func localState(dir outdir.Layout) (*local.State, error) { return local.LoadState(runDir(dir)) }
