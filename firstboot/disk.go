package firstboot

import (
	"etcdimg/blockdev"
	"etcdimg/layout"
	"fmt"
	"strings"
	"time"
)

// deviceWait bounds how long firstboot waits for block devices to appear
// after their drivers load.
const deviceWait = 10 * time.Second

// blockDev is one entry of /sys/class/block.
type blockDev = blockdev.Dev

// listBlock reads /sys/class/block.
func listBlock() ([]blockDev, error) { return blockdev.List(blockdev.SysBlock) }

// waitForPartition returns the device of the partition named label,
// waiting (bounded) for the disk drivers to publish it.
func waitForPartition(label string) (string, error) {
	return blockdev.WaitForPartition(label, deviceWait)
}

// findDataDisk picks the data disk: a partition named etcd-data, else the
// first whole disk that is not the boot disk and has no partitions.
func findDataDisk() (string, error) {
	deadline := time.Now().Add(deviceWait)
	for {
		devs, err := listBlock()
		if err != nil {
			return "", err
		}
		for i, d := range devs {
			if !d.IsPart && isDiskName(d.Name) {
				devs[i].FSType, devs[i].Label = probeDevice(d.Name)
			}
		}
		if dev, ok := pickDataDisk(devs); ok {
			return dev, nil
		}
		if time.Now().After(deadline) {
			var names []string
			for _, d := range devs {
				names = append(names, d.Name)
			}
			return "", fmt.Errorf("no data disk among [%s]: attach a second disk (blank, or one this appliance formatted) or a partition named %s", strings.Join(names, " "), layout.DataLabel)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pickDataDisk picks, whatever the bus and the probe order: a partition
// named etcd-data; else a whole disk this appliance formatted (ext4
// labelled etcd-data); else the first whole disk that is neither the
// boot disk, nor partitioned, nor a config drive.
func pickDataDisk(devs []blockDev) (string, bool) {
	boot := map[string]bool{}
	hasParts := map[string]bool{}
	for _, d := range devs {
		if d.IsPart {
			hasParts[d.Parent] = true
			if d.Partname == layout.ESPLabel {
				boot[d.Parent] = true
			}
			if d.Partname == layout.DataLabel {
				return d.Path(), true
			}
		}
	}
	var candidates []blockDev
	for _, d := range devs {
		if d.IsPart || boot[d.Name] || hasParts[d.Name] || !isDiskName(d.Name) || strings.EqualFold(d.Label, layout.ConfigDriveLabel) {
			continue
		}
		if d.FSType == "ext4" && d.Label == layout.DataLabel {
			return d.Path(), true
		}
		candidates = append(candidates, d)
	}
	if len(candidates) > 0 {
		return candidates[0].Path(), true
	}
	return "", false
}

func isDiskName(n string) bool {
	for _, p := range []string{"vd", "sd", "xvd", "nvme", "hd"} {
		if strings.HasPrefix(n, p) {
			return true
		}
	}
	return false
}
