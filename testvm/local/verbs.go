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

// The verbs on the cluster under `up` in a built directory: status,
// down, and stopping and starting one member.

// Status writes the table of the cluster under `up` in dir (State.Table),
// when its last backup was taken and its active alarms to w. It returns an error when no
// cluster runs there, or when a member is not running.
func Status(w io.Writer, c *spec.Cluster, dir outdir.Layout) error {
	st, err := Load(dir)
	if errors.Is(err, ErrNotRunning) {
		fmt.Fprintf(w, "not running (etcdimg up --out %s starts it)\n", dir.Dir())
		return errors.New("status: not running")
	}
	if err != nil {
		return err
	}
	down := st.Table(w)
	cluster.SlotTable(context.Background(), w, c, dir, Reach(dir))
	if e, err := cluster.Admin(c, dir, Reach(dir)); err != nil {
		fmt.Fprintln(w, "last backup: unknown ("+err.Error()+")")
	} else {
		// One bound for both: a cluster that does not answer costs it once.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		fmt.Fprintln(w, e.LastBackupLine(ctx, c.Backup.Interval))
		fmt.Fprintln(w, e.AlarmsLine(ctx))
		cancel()
	}
	if down > 0 {
		return fmt.Errorf("status: %d of %d members are not running", down, len(st.Members))
	}
	return nil
}

// PowerOff powers the cluster under `up` in dir off (Down), or says on
// w that none runs there.
func PowerOff(w, errw io.Writer, dir outdir.Layout) error {
	if _, err := Load(dir); errors.Is(err, ErrNotRunning) {
		fmt.Fprintln(w, "no cluster is running from", dir.Dir())
		return nil
	} else if err != nil {
		return err
	}
	Down(w, errw, dir)
	return nil
}

// StopMember powers member name off (ACPI, a minute to go; State.Stop)
// and keeps its disks, and returns the line that says so.
func StopMember(dir outdir.Layout, name string) (string, error) {
	return onMember(dir, "stop", func(st *State) (string, error) { return st.Stop(name, time.Minute) })
}

// StartMember boots stopped member name from its OS disk as it is and
// its data disk, first grown to dataSize when that is not 0 (GrowDataDisk),
// and returns the lines that say so.
func StartMember(dir outdir.Layout, name string, dataSize spec.Size) (string, error) {
	return onMember(dir, "start", func(st *State) (string, error) {
		grew := ""
		if dataSize != 0 {
			line, err := st.GrowDataDisk(name, int64(dataSize))
			if err != nil {
				return "", err
			}
			grew = line + "\n"
		}
		if err := st.Start(name); err != nil {
			return "", err
		}
		m, _ := st.Member(name)
		return fmt.Sprintf("%s%s: booting %s (pid %d), console %s", grew, m.Name, m.OSDisk, m.QEMU.PID, m.Console), nil
	})
}

// onMember runs do on the cluster under `up` in dir under the run
// directory's lock; verb names the command when no cluster runs there.
func onMember(dir outdir.Layout, verb string, do func(*State) (string, error)) (string, error) {
	st, lock, err := Open(dir)
	if errors.Is(err, ErrNotRunning) {
		return "", fmt.Errorf("%s: no cluster runs here under `etcdimg up`; on real machines, power the member with your platform's tools", verb)
	} else if err != nil {
		return "", err
	}
	defer lock.Unlock()
	return do(st)
}
