package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/cluster"
	"etcdimg/internal/outdir"
	"etcdimg/testvm/local"
)

func stopCmd(a *app) *cobra.Command {
	return memberCmd(a, "stop NAME", "Power one member off (ACPI) and keep its disks", func(st *local.State, name string) (string, error) {
		return st.Stop(name, time.Minute)
	})
}

func startCmd(a *app) *cobra.Command {
	return memberCmd(a, "start NAME", "Boot one stopped member from its image and data disk", func(st *local.State, name string) (string, error) {
		if err := st.Start(name); err != nil {
			return "", err
		}
		m, _ := st.Member(name)
		return fmt.Sprintf("%s: booting %s (pid %d), console %s", m.Name, m.Image, m.QEMU.PID, m.Console), nil
	})
}

// memberCmd is a command on one member of the local cluster, run under
// the run directory's lock.
func memberCmd(a *app, use, short string, do func(*local.State, string) (string, error)) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: a.onBuilt(func(cmd *cobra.Command, args []string, b *built) error {
			st, lock, err := local.Open(b.dir)
			if errors.Is(err, local.ErrNotRunning) {
				return fmt.Errorf("%s: no cluster runs here under `etcdimg up`; on real machines, power the member with your platform's tools", strings.Fields(use)[0])
			} else if err != nil {
				return err
			}
			defer lock.Unlock()
			line, err := do(st, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), line)
			return nil
		}),
	}
}

// lifecycleFlags are what replace and roll share.
type lifecycleFlags struct {
	spec    specFlags
	boot    bootFlags
	timeout time.Duration
	// allowOutage accepts a step that leaves fewer voters than a quorum
	// (a one- or two-member cluster), with disks kept only.
	allowOutage bool
	// prepare, when set, runs after the check and before the images are
	// built (rotate moves the certificates aside there).
	prepare func(outdir.Layout) error
}

func (f *lifecycleFlags) register(c *cobra.Command) {
	f.spec.register(c)
	f.boot.register(c)
	c.Flags().DurationVar(&f.timeout, "timeout", 5*time.Minute, "how long a replaced member has to rejoin")
	c.Flags().BoolVar(&f.allowOutage, "allow-outage", false, "with kept disks, accept that a one- or two-member cluster stops taking writes while a member is down")
}

// lifecycle sets up a Lifecycle on the local cluster (holding its lock
// until release) or, with none running, on the real deployment at the
// spec's addresses. check runs before any image is built, so that a
// refused command changes nothing; then the images are built from the
// current spec and PKI, before any member goes down.
func (f *lifecycleFlags) lifecycle(cmd *cobra.Command, only []string, check func(context.Context, *cluster.Lifecycle) error) (l *cluster.Lifecycle, images map[string]string, release func(), err error) {
	c, err := f.spec.cluster(cmd)
	if err != nil {
		return nil, nil, nil, err
	}
	dir := f.spec.dir()
	e, err := cluster.Admin(c, dir, local.Reach(dir))
	if err != nil {
		return nil, nil, nil, err
	}
	w := cmd.OutOrStdout()
	l = &cluster.Lifecycle{
		Etcd: e, Members: c.Names(), Timeout: f.timeout,
		Say: func(step string, took time.Duration) { fmt.Fprintf(w, "%-70s %6.1fs\n", step, took.Seconds()) },
	}
	if release, err = local.Lifecycle(cmd.Context(), c, dir, l, w, check); err != nil {
		return nil, nil, nil, err
	}
	if f.prepare != nil {
		err = f.prepare(dir)
	}
	if err == nil {
		_, _, images, err = buildImages(cmd, &f.spec, &f.boot, nil, only)
	}
	if err != nil {
		release()
		return nil, nil, nil, err
	}
	return l, images, release, nil
}

func replaceCmd(a *app) *cobra.Command {
	f := lifecycleFlags{spec: specFlags{app: a}}
	var keepDisk bool
	c := &cobra.Command{
		Use:   "replace NAME",
		Short: "Rebuild NAME's image, power it off, swap its OS disk (and its data disk for a blank one), boot it, wait until it is a voter again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o := cluster.ReplaceOptions{KeepDisk: keepDisk, AllowOutage: f.allowOutage}
			l, images, release, err := f.lifecycle(cmd, args[:1], func(ctx context.Context, l *cluster.Lifecycle) error {
				return l.CheckReplace(ctx, args[0], o)
			})
			if err != nil {
				return err
			}
			defer release()
			ctx, stop := interruptible()
			defer stop()
			start := time.Now()
			o.Image = images[args[0]]
			if err := l.Replace(ctx, args[0], o); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "replaced %s in %.1fs\n", args[0], time.Since(start).Seconds())
			return nil
		},
	}
	f.register(c)
	c.Flags().BoolVar(&keepDisk, "keep-disk", false, "keep the member's data disk (and its identity) instead of giving it a blank one")
	return c
}

// roll checks that every member is healthy, builds the images, and
// replaces the members in turn (keeping their data disks or not); it
// returns how many it rolled and how long the roll took.
func (f *lifecycleFlags) roll(cmd *cobra.Command, keepDisks bool) (int, time.Duration, error) {
	o := cluster.RollOptions{KeepDisks: keepDisks, AllowOutage: f.allowOutage}
	l, images, release, err := f.lifecycle(cmd, nil, func(ctx context.Context, l *cluster.Lifecycle) error { return l.CheckRoll(ctx, o) })
	if err != nil {
		return 0, 0, err
	}
	defer release()
	ctx, stop := interruptible()
	defer stop()
	start := time.Now()
	if err := l.Roll(ctx, images, o); err != nil {
		return 0, 0, err
	}
	return len(images), time.Since(start), nil
}

func rollCmd(a *app) *cobra.Command {
	f := lifecycleFlags{spec: specFlags{app: a}}
	var keepDisks bool
	c := &cobra.Command{
		Use:   "roll",
		Short: "Replace every member in turn, followers first, the leader last; refuses unless all are healthy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, took, err := f.roll(cmd, keepDisks)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rolled %d members in %.1fs\n", n, took.Seconds())
			return nil
		},
	}
	f.register(c)
	c.Flags().BoolVar(&keepDisks, "keep-disks", false, "keep every member's data disk instead of giving each a blank one")
	return c
}
