package cluster

import (
	"context"
	"fmt"
	"io"
	"time"
)

// LocalDriver powers the QEMU members of a cluster started by `etcdimg
// up`. The caller holds the run directory's lock for as long as it uses
// the driver.
type LocalDriver struct {
	State       *State
	PowerOffMax time.Duration // how long a member may take to power off
	// BeforeBoot, when set, runs once the member is off and its disks
	// swapped, before it boots again (chaos keeps its console there: a
	// boot starts a new console file).
	BeforeBoot func(member string) error
}

func (d *LocalDriver) Running(member string) (bool, error) {
	m, err := d.State.Member(member)
	if err != nil {
		return false, err
	}
	return m.Running(), nil
}

func (d *LocalDriver) Swap(ctx context.Context, member, image string, keepDisk bool, say Say) error {
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

// ManualDriver is for machines etcdimg does not run: it tells the
// operator what to do with which image, and the lifecycle then waits for
// the member to come back by itself (firstboot rejoins a blank member
// with nothing from the host).
type ManualDriver struct {
	Out     io.Writer
	Addr    map[string]string // member name → address, for the instructions
	Etcd    *Etcd             // to see the member go down
	Timeout time.Duration     // how long the operator has to take it down
}

func (d *ManualDriver) Running(string) (bool, error) { return true, nil }

func (d *ManualDriver) Swap(ctx context.Context, member, image string, keepDisk bool, say Say) error {
	disk := "attach a new blank data volume (keep the old one detached, do not delete it)"
	if keepDisk {
		disk = "reattach its current data volume"
	}
	fmt.Fprintf(d.Out, "now, by hand: power off the machine of %s (%s); boot it (or a new instance with the same private IP) from %s; %s.\nwaiting for %s to rejoin...\n",
		member, d.Addr[member], image, disk, member)
	// The member is gone once its client port stops answering; only then
	// can its return be told from its old self.
	start := time.Now()
	for {
		if d.Timeout > 0 && time.Since(start) > d.Timeout {
			return fmt.Errorf("%s still answers after %s; was its machine replaced?", member, d.Timeout)
		}
		st := d.Etcd.Statuses(ctx, 3*time.Second)
		down := true
		for _, s := range st {
			if s.Name == member && s.Err == nil {
				down = false
			}
		}
		if down {
			say(member+": down", time.Since(start))
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
