// Package datadisk owns the member's data disk: finding it over the
// device window (a disk with this appliance's label at once, a blank one
// only once the window has closed), the disk rule (format only a disk
// that is provably blank, or provably an interrupted first format of
// ours), the first format and its intent record, the zero-outs that keep
// the format cheap, mounting it read-only until claimed, and the marker
// that says whose disk it is (Claim, RecordClusterID).
//
// It knows the member only as its cluster and name (Owner). It does not
// decide whether the member bootstraps, joins or restores (package join
// does), and it never reads the config.
package datadisk

import (
	"fmt"
	"strings"
	"time"

	"etcdimg/firstboot/internal/blockdev"
	"etcdimg/internal/layout"
)

// DeviceWait bounds how long firstboot waits for block devices to appear
// after their drivers load (blockdev.DeviceWait): on metal and in
// clouds, where a volume may be enumerated after an instance store, the
// whole of it passes before a blank disk is taken.
const DeviceWait = blockdev.DeviceWait

// LaunchedDeviceWait is the device window of a machine whose config came
// through QEMU's fw_cfg (`etcdimg up`, or QEMU started by hand as the
// docs/platforms.md shows): its disks are attached when QEMU starts, and virtio's
// drivers publish them while they load, before the node binary runs. A
// blank first boot would otherwise wait 10 s for a disk that cannot come.
const LaunchedDeviceWait = 2 * time.Second

// windowOpened is when the device window opened: when the node binary
// started, which is after the initramfs loaded the disk drivers.
var windowOpened = time.Now()

// blockDev is one entry of /sys/class/block.
type blockDev = blockdev.Dev

// listBlock reads /sys/class/block.
func listBlock() ([]blockDev, error) { return blockdev.List(blockdev.SysBlock) }

// WaitForPartition returns the device of the partition named label,
// waiting (bounded) for the disk drivers to publish it.
func WaitForPartition(label string) (string, error) {
	return blockdev.WaitForPartition(label, DeviceWait)
}

// The data disk is picked over the device window, from looks at the
// block devices: a disk with this appliance's label, the member's own
// data disk, is taken the moment it is seen; a blank one only once the
// whole window has passed without such a disk. A blank disk that shows
// up first (an instance store, or any disk faster than a slowly
// attached data volume) would otherwise be formatted while the
// member's disk is on its way, and the member, finding no data, would
// bootstrap a new cluster under the old one's ID: every member of a
// cluster does so after a power cut, and a one-member cluster after any
// reboot. For the same reason a member that will start without etcd
// data waits out the window before it decides anything, and stops if
// another disk with the label appears (confirmAlone).

// diskLook is one look at the block devices, whole disks probed for
// their file system and label.
type diskLook struct {
	At   time.Duration // since the device window opened
	Devs []blockDev
}

// pickFromLooks picks the data disk from the looks so far, oldest
// first, or says to look again (done false).
func pickFromLooks(looks []diskLook, window time.Duration) (dev string, done bool, err error) {
	last := looks[len(looks)-1]
	if dev, ok := labelledDataDisk(last.Devs); ok {
		return dev, true, nil
	}
	if last.At < window {
		return "", false, nil
	}
	if dev, ok := pickDataDisk(last.Devs); ok {
		return dev, true, nil
	}
	var names []string
	for _, d := range last.Devs {
		names = append(names, d.Name)
	}
	return "", true, fmt.Errorf("no data disk among [%s] after %s: attach a second disk (blank, or one this appliance formatted) or a partition named %s", strings.Join(names, " "), window, layout.DataLabel)
}

// confirmAlone says, from the looks so far, whether taken (picked, and
// about to be formatted, or holding no etcd data) is the only disk with
// this appliance's label: an error as soon as another one is seen, done
// with no error once the window has closed without one.
func confirmAlone(looks []diskLook, taken string, window time.Duration) (done bool, err error) {
	for _, l := range looks {
		if others := otherDataDisks(l.Devs, taken); len(others) > 0 {
			return true, fmt.Errorf("another disk with this appliance's label, %s, appeared %s after the disks' drivers loaded: this member's etcd data may be on it, and %s holds none; not starting without data (no new cluster, no joining as a new member) beside it. Power off, and detach whichever of the two is not this member's data disk", strings.Join(others, ", "), l.At.Round(100*time.Millisecond), taken)
		}
	}
	return looks[len(looks)-1].At >= window, nil
}

// otherDataDisks are the disks in devs, besides taken, that carry this
// appliance's label.
func otherDataDisks(devs []blockDev, taken string) []string {
	var out []string
	for _, d := range devs {
		if isLabelledData(d) && d.Path() != taken {
			out = append(out, d.Path())
		}
	}
	return out
}

// isLabelledData is a partition named etcd-data or a whole disk this
// appliance formatted.
func isLabelledData(d blockDev) bool {
	if d.IsPart {
		return d.Partname == layout.DataLabel
	}
	return blockdev.IsDiskName(d.Name) && d.FSType == "ext4" && d.Label == layout.DataLabel
}

// labelledDataDisk is the first disk in devs with this appliance's
// label: a partition named etcd-data, else a whole disk it formatted.
func labelledDataDisk(devs []blockDev) (string, bool) {
	for _, d := range devs {
		if d.IsPart && isLabelledData(d) {
			return d.Path(), true
		}
	}
	for _, d := range devs {
		if !d.IsPart && isLabelledData(d) {
			return d.Path(), true
		}
	}
	return "", false
}

// pickDataDisk picks, whatever the bus and the probe order: a disk with
// this appliance's label (labelledDataDisk); else the first whole disk
// that is neither the boot disk, nor partitioned, nor a config drive.
// Only once the device window has closed may it be the latter.
func pickDataDisk(devs []blockDev) (string, bool) {
	if dev, ok := labelledDataDisk(devs); ok {
		return dev, true
	}
	boot := map[string]bool{}
	hasParts := map[string]bool{}
	for _, d := range devs {
		if d.IsPart {
			hasParts[d.Parent] = true
			if d.Partname == layout.ESPLabel {
				boot[d.Parent] = true
			}
		}
	}
	for _, d := range devs {
		if d.IsPart || boot[d.Name] || hasParts[d.Name] || !blockdev.IsDiskName(d.Name) || strings.EqualFold(d.Label, layout.ConfigDriveLabel) {
			continue
		}
		return d.Path(), true
	}
	return "", false
}

// deviceWindow is the real devices' side of pickFromLooks and
// confirmAlone: it looks every 100 ms.
type deviceWindow struct {
	opened time.Time
	window time.Duration // how long it stays open (DeviceWait, or LaunchedDeviceWait)
	looks  []diskLook
}

// look adds a look at the block devices now, whole disks probed.
func (w *deviceWindow) look() error {
	devs, err := listBlock()
	if err != nil {
		return fmt.Errorf("list block devices: %w", err)
	}
	for i, d := range devs {
		if !d.IsPart && blockdev.IsDiskName(d.Name) {
			devs[i].FSType, devs[i].Label = probeDataDisk(d.Name)
		}
	}
	w.looks = append(w.looks, diskLook{At: time.Since(w.opened), Devs: devs})
	return nil
}

// findDataDisk picks the data disk over the device window.
func (w *deviceWindow) findDataDisk() (string, error) {
	for {
		if err := w.look(); err != nil {
			return "", err
		}
		if dev, done, err := pickFromLooks(w.looks, w.window); done {
			return dev, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// confirmAlone waits until the device window closes, and fails if
// another disk with this appliance's label than taken appears.
func (w *deviceWindow) confirmAlone(taken string) error {
	for {
		if err := w.look(); err != nil {
			return err
		}
		if done, err := confirmAlone(w.looks, taken, w.window); done {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
