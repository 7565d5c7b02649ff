package local

import (
	"context"
	"fmt"
	"time"

	"etcdimg/cluster"
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
