package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/health"
	"etcdimg/outdir"
	"etcdimg/pki"
	"etcdimg/render"
	"etcdimg/spec"
	"etcdimg/testvm"
)

// runDir and diskDir sit in the output directory: what a running cluster
// needs (consoles, sockets, state) and the data disks, kept across
// down and up.
func runDir(dir outdir.Layout) string  { return filepath.Join(dir.Dir(), "run") }
func diskDir(dir outdir.Layout) string { return filepath.Join(dir.Dir(), "disks") }

// loadBuilt reads the spec of an output directory that `build` wrote.
func loadBuilt(out string) (*spec.Cluster, outdir.Layout, error) {
	dir := outdir.Layout(out)
	if !render.Exists(dir.Spec()) {
		return nil, dir, fmt.Errorf("%s has no etcdimg.yaml; run `etcdimg build --out %s` first", out, out)
	}
	c, _, err := render.LoadSpec(render.Source{}, dir)
	return c, dir, err
}

// endpoints are the members' client URLs: the forwarded loopback ports
// while the cluster runs under `up`, else the members' own addresses.
func endpoints(c *spec.Cluster, dir outdir.Layout) []health.Endpoint {
	forwarded := map[string]int{}
	if st, err := testvm.LoadState(runDir(dir)); err == nil {
		for _, s := range st.Members {
			forwarded[s.Name] = s.Client
		}
	}
	var eps []health.Endpoint
	for _, m := range c.Members {
		url := fmt.Sprintf("https://%s:%d", m.IP, spec.ClientPort)
		if port, ok := forwarded[m.Name]; ok {
			url = fmt.Sprintf("https://127.0.0.1:%d", port)
		}
		eps = append(eps, health.Endpoint{Member: m.Name, URL: url})
	}
	return eps
}

// outFlag registers --out, the output directory every command reads.
func outFlag(c *cobra.Command, out *string) {
	c.Flags().StringVar(out, "out", outdir.Default, "output directory")
}

// writeToolConfigs rewrites etcdctl.env and prometheus.yml for where the
// members are reached: forwarded ports under `up` (st non-nil), else
// their own addresses.
func writeToolConfigs(c *spec.Cluster, dir outdir.Layout, st *testvm.ClusterState) error {
	var ep render.Endpoint
	if st != nil {
		ports := map[string][2]int{}
		for _, m := range st.Members {
			ports[m.Name] = [2]int{m.Client, m.Metrics}
		}
		ep = func(m spec.Member, port int) string {
			p := ports[m.Name][0]
			if port == spec.MetricsPort {
				p = ports[m.Name][1]
			}
			return "127.0.0.1:" + strconv.Itoa(p)
		}
	}
	abs, err := filepath.Abs(dir.Dir())
	if err != nil {
		return err
	}
	prom, err := render.Prometheus(c, ep)
	if err != nil {
		return err
	}
	rel := func(p string) string { r, _ := dir.Rel(p); return r }
	_, err = outdir.Write(dir.Dir(), []outdir.File{
		{Path: rel(dir.EtcdctlEnv()), Data: render.EtcdctlEnv(c, outdir.Layout(abs), ep), Mode: 0o644},
		{Path: rel(dir.Prometheus()), Data: prom, Mode: 0o644},
	})
	return err
}

func upCmd() *cobra.Command {
	var out, accel string
	var memory, portBase int
	var detach bool
	var timeout time.Duration
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
			var members []testvm.MemberSpec
			for _, m := range c.Members {
				img := dir.Image(m.Name)
				if !render.Exists(img) {
					return fmt.Errorf("%s is missing; run `etcdimg build --out %s` first", img, out)
				}
				members = append(members, testvm.MemberSpec{Name: m.Name, IP: m.Addr(), Image: img})
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			var reserved []netip.Addr
			if gw, err := netip.ParseAddr(c.Network.Gateway); err == nil {
				reserved = append(reserved, gw)
			}
			start := time.Now()
			st, err := testvm.Up(testvm.ClusterOptions{
				RunDir: runDir(dir), DiskDir: diskDir(dir),
				Network: c.Prefix(), Reserved: reserved, Members: members,
				MemoryMB: memory, Accel: accel, PortBase: portBase, DataSize: 1 << 30,
				SwitchCommand: []string{exe, "lan", "--socket"},
			})
			w := cmd.OutOrStdout()
			if err != nil {
				if st != nil {
					st.Down(runDir(dir), 30*time.Second)
				}
				return err
			}
			if err := writeToolConfigs(c, dir, st); err != nil {
				return err
			}
			fmt.Fprintf(w, "booting %d members (%s, %d MiB each) on a virtual LAN %s\n", len(st.Members), st.Accel, st.MemoryMB, c.Network.CIDR)
			for _, m := range st.Members {
				fmt.Fprintf(w, "member   %-8s %-15s pid %-7d client https://127.0.0.1:%d  metrics http://127.0.0.1:%d  console %s\n",
					m.Name, m.IP, m.PID, m.Client, m.Metrics, m.Console)
			}
			tlsCfg, err := health.TLS(dir.PKIFile(pki.CACertFile), dir.PKIFile(pki.AdminCert), dir.PKIFile(pki.AdminKey))
			if err != nil {
				return err
			}
			eps := endpoints(c, dir)
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var rs []health.Result
			deadline := time.Now().Add(timeout)
			for {
				rs = health.Check(ctx, eps, tlsCfg, 2*time.Second)
				if health.Healthy(rs) || time.Now().After(deadline) || ctx.Err() != nil {
					break
				}
				if len(st.Running()) < len(st.Members) {
					break
				}
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			health.Table(w, rs)
			if !health.Healthy(rs) {
				for i, r := range rs {
					if !r.Healthy {
						fmt.Fprintf(os.Stderr, "--- %s console tail (%s) ---\n%s\n", r.Member, st.Members[i].Console, testvm.TailFile(st.Members[i].Console, 15))
					}
				}
				if !detach {
					downAndReport(w, c, dir, st)
				}
				return fmt.Errorf("up: the cluster was not healthy within %s (see the consoles above)", timeout)
			}
			fmt.Fprintf(w, "cluster %s healthy in %.1fs; etcdctl: source %s, or etcdimg etcdctl -- member list\n", c.Name, time.Since(start).Seconds(), dir.EtcdctlEnv())
			if detach {
				fmt.Fprintf(w, "running in the background; stop it with: etcdimg down --out %s\n", out)
				return nil
			}
			fmt.Fprintf(w, "press Ctrl-C to power the cluster off (or run with --detach)\n")
			for ctx.Err() == nil && len(st.Running()) > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			downAndReport(w, c, dir, st)
			return nil
		},
	}
	outFlag(c, &out)
	c.Flags().StringVar(&accel, "accel", "", "kvm or tcg (default: $"+testvm.AccelEnv+", else KVM when it works here, else TCG)")
	c.Flags().IntVar(&memory, "memory", 256, "guest RAM per member, MiB")
	c.Flags().IntVar(&portBase, "port-base", 40000, "member N's client port is BASE+100N+79, its metrics port BASE+100N+81")
	c.Flags().BoolVar(&detach, "detach", false, "leave the cluster running and return once it is healthy")
	c.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for a healthy cluster")
	return c
}

func downAndReport(w io.Writer, c *spec.Cluster, dir outdir.Layout, st *testvm.ClusterState) {
	for _, line := range st.Down(runDir(dir), time.Minute) {
		fmt.Fprintln(w, line)
	}
	if err := writeToolConfigs(c, dir, nil); err != nil {
		fmt.Fprintf(os.Stderr, "etcdimg: %v\n", err)
	}
}

func downCmd() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "down",
		Short: "Power every member off (ACPI), wait, then stop QEMU; data disks are kept",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, dir, err := loadBuilt(out)
			if err != nil {
				return err
			}
			st, err := testvm.LoadState(runDir(dir))
			if errors.Is(err, testvm.ErrNotRunning) {
				fmt.Fprintln(cmd.OutOrStdout(), "no cluster is running from", out)
				return nil
			}
			if err != nil {
				return err
			}
			downAndReport(cmd.OutOrStdout(), c, dir, st)
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
			_, dir, err := loadBuilt(out)
			if err != nil {
				return err
			}
			st, err := testvm.LoadState(runDir(dir))
			if errors.Is(err, testvm.ErrNotRunning) {
				fmt.Fprintf(cmd.OutOrStdout(), "not running (etcdimg up --out %s starts it)\n", out)
				return errors.New("status: not running")
			}
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "started %s, %s, %d MiB per member, LAN switch pid %d\n", st.Started.Format(time.RFC3339), st.Accel, st.MemoryMB, st.SwitchPID)
			fmt.Fprintf(w, "%-8s %-15s %-8s %-8s %-24s %-24s %s\n", "MEMBER", "IP", "PID", "STATE", "CLIENT", "METRICS", "CONSOLE")
			down := 0
			for _, m := range st.Members {
				state := "running"
				if !testvm.Alive(m.PID) || !testvm.IsQEMU(m.PID, m.Image) {
					state, down = "stopped", down+1
				}
				fmt.Fprintf(w, "%-8s %-15s %-8d %-8s %-24s %-24s %s\n", m.Name, m.IP, m.PID, state,
					fmt.Sprintf("https://127.0.0.1:%d", m.Client), fmt.Sprintf("http://127.0.0.1:%d", m.Metrics), m.Console)
			}
			if down > 0 {
				return fmt.Errorf("status: %d of %d members are not running", down, len(st.Members))
			}
			return nil
		},
	}
	outFlag(c, &out)
	return c
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
			tlsCfg, err := health.TLS(dir.PKIFile(pki.CACertFile), dir.PKIFile(pki.AdminCert), dir.PKIFile(pki.AdminKey))
			if err != nil {
				return err
			}
			eps := endpoints(c, dir)
			rs := health.Check(context.Background(), eps, tlsCfg, timeout)
			health.Table(cmd.OutOrStdout(), rs)
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
			eps := endpoints(c, dir)
			var urls []string
			for _, e := range eps {
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

// lanCmd runs the virtual LAN's switch; `up` starts it as its own process.
func lanCmd() *cobra.Command {
	var socket string
	c := &cobra.Command{
		Use:    "lan --socket PATH",
		Short:  "Run the virtual LAN switch (started by up)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sw, err := testvm.ListenSwitch(socket)
			if err != nil {
				return err
			}
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
			go func() { <-sig; sw.Close() }()
			return sw.Serve()
		},
	}
	c.Flags().StringVar(&socket, "socket", "", "unix socket to listen on")
	return c
}
