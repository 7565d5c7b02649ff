package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/cluster"
	"etcdimg/testvm"
	"etcdimg/testvm/local"
)

func upCmd(a *app) *cobra.Command {
	var o local.UpOptions
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "up",
		Short: "Boot every member in QEMU on one virtual LAN and wait until the cluster is healthy",
		Args:  cobra.NoArgs,
		RunE: a.onBuilt(func(cmd *cobra.Command, _ []string, b *built) error {
			if !cmd.Flags().Changed("data-size") {
				o.DataSize = local.DefaultDataSize(b.c)
			}
			if err := o.Check(); err != nil {
				return usageError{err}
			}
			o.Cluster, o.Dir, o.Stdout, o.Stderr = b.c, b.dir, cmd.OutOrStdout(), os.Stderr
			up, err := local.Up(o)
			if err != nil {
				return err
			}
			ctx, stop := interruptible()
			defer stop()
			return up.Run(ctx, timeout)
		}),
	}
	c.Flags().StringVar(&o.Accel, "accel", "", "kvm or tcg (default: $"+testvm.AccelEnv+", else KVM when it works here, else TCG)")
	c.Flags().IntVar(&o.MemoryMB, "memory", 256, "guest RAM per member, MiB")
	c.Flags().IntVar(&o.PortBase, "port-base", 40000, "member N's client port is BASE+100N+79, its metrics port BASE+100N+81")
	c.Flags().BoolVar(&o.Detach, "detach", false, "leave the cluster running and return once it is healthy")
	c.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for a healthy cluster")
	c.Flags().Var(&o.DataSize, "data-size", "size of each new (sparse) data disk; a member lowers its backend quota to fit the disk less 512MiB")
	return c
}

func downCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Power every member off (ACPI), wait, then stop QEMU; data disks are kept",
		Args:  cobra.NoArgs,
		RunE: a.onBuilt(func(cmd *cobra.Command, _ []string, b *built) error {
			return local.PowerOff(cmd.OutOrStdout(), os.Stderr, b.dir)
		}),
	}
}

func statusCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "List the members, their QEMU PIDs, ports and console logs",
		Args:  cobra.NoArgs,
		RunE: a.onBuilt(func(cmd *cobra.Command, _ []string, b *built) error {
			return local.Status(cmd.OutOrStdout(), b.c, b.dir)
		}),
	}
}

func healthCmd(a *app) *cobra.Command {
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "health",
		Short: "Check every member over mTLS; print ENDPOINT, HEALTH, TOOK, ERROR; exit 1 if any is unhealthy",
		Args:  cobra.NoArgs,
		RunE: a.onEtcd(func(cmd *cobra.Command, _ []string, b *built, e *cluster.Etcd) error {
			return e.CheckHealth(cmd.Context(), b.c, b.dir, timeout, cmd.OutOrStdout(), os.Stderr)
		}),
	}
	c.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "per-member timeout")
	return c
}

func etcdctlCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "etcdctl [--out DIR] -- ARGS",
		Short: "Run the built etcdctl with the admin certificate and every endpoint filled in",
		RunE: a.onBuilt(func(cmd *cobra.Command, args []string, b *built) error {
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			node := filepath.Join(filepath.Dir(exe), "etcdnode")
			env := append(os.Environ(), cluster.EtcdctlEnv(b.c, b.dir, local.Reach(b.dir))...)
			if err := syscall.Exec(node, append([]string{"etcdctl"}, args...), env); err != nil {
				return fmt.Errorf("etcdctl: run %s: %w; build it with `make`", node, err)
			}
			return nil
		}),
	}
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
			return testvm.RunSwitch(socket, os.Stderr)
		},
	}
	c.Flags().StringVar(&socket, "socket", "", "unix socket to listen on")
	c.Flags().StringVar(&relay, "relay", "", "relay standard input and output to this TCP address")
	return c
}
