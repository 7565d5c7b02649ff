package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"etcdimg/cluster"
	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
)

// Driver is the cluster.Driver of the QEMU members of a cluster started
// by `etcdimg up`. The caller holds the run directory's lock for as long
// as it uses the driver.
type Driver struct {
	State       *State
	PowerOffMax time.Duration // how long a member may take to power off
	// BeforeBoot, when set, runs once the member is off and its disks
	// swapped, before it boots again (chaos keeps its console there: a
	// boot starts a new console file).
	BeforeBoot func(member string) error
}

var _ cluster.Driver = (*Driver)(nil)

func (d *Driver) Running(member string) (bool, error) {
	m, err := d.State.Member(member)
	if err != nil {
		return false, err
	}
	return m.Running(), nil
}

func (d *Driver) Swap(ctx context.Context, member, image string, keepDisk bool, say cluster.Say) error {
	if _, err := d.State.Member(member); err != nil {
		return err
	}
	timeout := d.PowerOffMax
	if timeout == 0 {
		timeout = time.Minute
	}
	start := time.Now()
	line, err := d.State.Stop(member, timeout)
	if err != nil {
		return err
	}
	say(line, time.Since(start))
	if !keepDisk {
		start = time.Now()
		old, err := d.State.SetAsideDataDisk(member)
		if err != nil {
			return err
		}
		if old != "" {
			say(fmt.Sprintf("%s: old data disk kept at %s; a blank one replaces it", member, old), time.Since(start))
		}
	}
	start = time.Now()
	if err := d.State.SetImage(member, image); err != nil {
		return err
	}
	line, err = d.State.PrepareOSDisk(member)
	if err != nil {
		return err
	}
	say(line, time.Since(start))
	start = time.Now()
	if d.BeforeBoot != nil {
		if err := d.BeforeBoot(member); err != nil {
			return err
		}
	}
	if err := d.State.Start(member); err != nil {
		return err
	}
	m, _ := d.State.Member(member)
	say(fmt.Sprintf("%s: booting %s (pid %d)", member, image, m.QEMU.PID), time.Since(start))
	return nil
}

// Lifecycle gives l its Driver for the cluster of the built directory
// dir: this package's on the cluster under `up` there (holding its run
// directory's lock until release), or, with none running, cluster's
// ManualDriver for the machines at the spec's addresses, which tells the
// operator on w what to do. Then l is attached to dir (check runs first;
// the cluster answering must be the one dir recorded), and a directory
// that adopts the cluster answering says so on w.
func Lifecycle(ctx context.Context, c *spec.Cluster, dir outdir.Layout, l *cluster.Lifecycle, w io.Writer, check func(context.Context, *cluster.Lifecycle) error) (release func(), err error) {
	release = func() {}
	st, lock, err := Open(dir)
	switch {
	case err == nil:
		l.Driver, release = &Driver{State: st}, lock.Unlock
	case errors.Is(err, ErrNotRunning):
		l.Driver = cluster.Manual(c, l.Etcd, w, l.Timeout)
	default:
		return nil, err
	}
	adopted, err := l.Attach(ctx, c, dir, check)
	if adopted {
		fmt.Fprintf(w, "recorded cluster %x (the one answering at the spec's addresses) in %s\n", l.ClusterID, dir.ClusterRecord())
	}
	if err != nil {
		release()
		return nil, err
	}
	return release, nil
}
