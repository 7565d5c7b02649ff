package local

import (
	"context"
	"fmt"
	"io"
	"time"

	"etcdimg/cluster"
	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
)

// LifecycleOptions are what replace, roll and rotate share: the cluster
// of a built directory, operated under `up` here or at the spec's
// addresses (see Lifecycle), and how its new images are made.
type LifecycleOptions struct {
	Cluster *spec.Cluster
	Dir     outdir.Layout
	Timeout time.Duration // how long a replaced member has to rejoin
	// AllowOutage accepts a step that leaves fewer voters than a quorum
	// (a one- or two-member cluster), with disks kept only.
	AllowOutage bool
	Out         io.Writer // where each step is said, with how long it took
	// Prepare, when set, runs after the check and before the images are
	// built (rotate moves the certificates aside there).
	Prepare func(*spec.Cluster, outdir.Layout) error
	// Build builds the images from the current spec and PKI (of the
	// members in only, or of every one when nil) and returns each
	// member's raw image.
	Build func(only []string) (map[string]string, error)
	// Full makes upgrade send every file of each slot, even those the
	// member runs already.
	Full bool
	// AllowDowngrade lets upgrade install images whose etcd is one minor
	// below the cluster's version, after etcd's own downgrade
	// (cluster.Upgrader.AllowDowngrade).
	AllowDowngrade bool
	// Interruptible, when set, makes the context the members go down
	// under, once the images are built (the command's, that Ctrl-C
	// cancels); else that context is ctx.
	Interruptible func() (context.Context, context.CancelFunc)
}

// Replace replaces member (cluster.Lifecycle.Replace) with a new image of
// it, keeping its data disk or not, and returns how long the replacement
// took once the image was built.
func Replace(ctx context.Context, o LifecycleOptions, member string, keepDisk bool) (time.Duration, error) {
	ro := cluster.ReplaceOptions{KeepDisk: keepDisk, AllowOutage: o.AllowOutage}
	var took time.Duration
	err := o.run(ctx, "replace "+member, []string{member}, func(ctx context.Context, l *cluster.Lifecycle) error {
		return l.CheckReplace(ctx, member, ro)
	}, func(ctx context.Context, l *cluster.Lifecycle, images map[string]string) error {
		start := time.Now()
		ro.Image = images[member]
		err := l.Replace(ctx, member, ro)
		took = time.Since(start)
		return err
	})
	return took, err
}

// Roll checks that every member is healthy, builds the images, and
// replaces the members in turn (cluster.Lifecycle.Roll), keeping their
// data disks or not; it returns how many it rolled and how long the roll
// took.
func Roll(ctx context.Context, o LifecycleOptions, keepDisks bool) (n int, took time.Duration, err error) {
	ro := cluster.RollOptions{KeepDisks: keepDisks, AllowOutage: o.AllowOutage}
	err = o.run(ctx, "roll", nil, func(ctx context.Context, l *cluster.Lifecycle) error {
		return l.CheckRoll(ctx, ro)
	}, func(ctx context.Context, l *cluster.Lifecycle, images map[string]string) error {
		start := time.Now()
		err := l.Roll(ctx, images, ro)
		n, took = len(images), time.Since(start)
		return err
	})
	return n, took, err
}

// run sets up a Lifecycle on the cluster with the admin certificate
// (Lifecycle: under `up`, it holds the run directory's lock until run
// returns). check runs before any image is built, so that a refused
// command changes nothing; then the cluster's operation lock is taken
// for op (cluster.LockOperation: a second operator is refused), then
// Prepare, then the images are built from the current spec and PKI,
// before run takes any member down.
func (o LifecycleOptions) run(ctx context.Context, op string, only []string, check func(context.Context, *cluster.Lifecycle) error, run func(context.Context, *cluster.Lifecycle, map[string]string) error) error {
	e, err := cluster.Admin(o.Cluster, o.Dir, Reach(o.Dir))
	if err != nil {
		return err
	}
	l := &cluster.Lifecycle{
		Etcd: e, Members: o.Cluster.Names(), Timeout: o.Timeout,
		Say: func(step string, took time.Duration) { fmt.Fprintf(o.Out, "%-70s %6.1fs\n", step, took.Seconds()) },
	}
	release, err := Lifecycle(ctx, o.Cluster, o.Dir, l, o.Out, check)
	if err != nil {
		return err
	}
	defer release()
	// One operation at a time on the cluster, whoever runs it: taken once
	// the check passed, before anything is built or goes down. Replace
	// and Roll check again under it.
	lock, err := e.LockOperation(ctx, op)
	if err != nil {
		return err
	}
	defer lock.Release()
	l.Guard = lock.Held
	if o.Prepare != nil {
		if err := o.Prepare(o.Cluster, o.Dir); err != nil {
			return err
		}
	}
	images, err := o.Build(only)
	if err != nil {
		return err
	}
	interruptible := o.Interruptible
	if interruptible == nil {
		interruptible = func() (context.Context, context.CancelFunc) { return context.WithCancel(ctx) }
	}
	ctx, stop := interruptible()
	defer stop()
	return run(ctx, l, images)
}

// Upgrade checks that every member is healthy, builds the images, and
// installs each member's (of only, or every one) over its node API,
// one at a time (cluster.Lifecycle.Upgrade): the same under `up` as on
// machines reached at the spec's addresses, with no driver. It returns
// the members it upgraded and how long that took.
func Upgrade(ctx context.Context, o LifecycleOptions, only []string) (done []string, took time.Duration, err error) {
	if err := forwardsNodeAPI(o.Dir); err != nil {
		return nil, 0, err
	}
	ro := cluster.RollOptions{KeepDisks: true, AllowOutage: o.AllowOutage, Verb: "upgrade"}
	u := o.Cluster.Upgrade
	err = o.run(ctx, "upgrade", only, func(ctx context.Context, l *cluster.Lifecycle) error {
		return l.CheckRoll(ctx, ro)
	}, func(ctx context.Context, l *cluster.Lifecycle, images map[string]string) error {
		api, err := cluster.AdminNodeAPI(o.Cluster, o.Dir, Reach(o.Dir))
		if err != nil {
			return err
		}
		up := &cluster.Upgrader{API: api, Trial: time.Duration(u.Tries)*u.TrialTimeout.D() + 2*time.Minute, Full: o.Full, AllowDowngrade: o.AllowDowngrade, AllowOutage: o.AllowOutage}
		l.Driver = up
		start := time.Now()
		done, err = l.Upgrade(ctx, up, images, only)
		took = time.Since(start)
		return err
	})
	return done, took, err
}

// forwardsNodeAPI refuses an upgrade of a cluster under `up` whose LAN
// was started by an etcdimg without boot slots: its gateway forwards no
// node API port, and a member restart (replace, roll) does not change
// that; `down` and `up` do, keeping the data disks. A directory with no
// cluster under `up` (machines reached at the spec's addresses) passes.
func forwardsNodeAPI(dir outdir.Layout) error {
	st, err := Load(dir)
	if err != nil {
		return nil
	}
	for _, m := range st.Members {
		if m.NodeAPI == 0 {
			return fmt.Errorf("upgrade: the cluster under `up` in %s was started by an etcdimg without boot slots, and its LAN forwards no node API port for %s: run `etcdimg down` and `etcdimg up` once (the data disks are kept), then upgrade", dir.Dir(), m.Name)
		}
	}
	return nil
}
