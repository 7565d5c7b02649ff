package cluster

import (
	"context"
	"fmt"
	"io"
	"time"

	"etcdimg/internal/spec"
)

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

// Manual is the ManualDriver of c's machines, named by their addresses
// in the spec; out is the operator's.
func Manual(c *spec.Cluster, e *Etcd, out io.Writer, timeout time.Duration) *ManualDriver {
	addr := map[string]string{}
	for _, m := range c.Members {
		addr[m.Name] = m.IP
	}
	return &ManualDriver{Out: out, Addr: addr, Etcd: e, Timeout: timeout}
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
