package firstboot

import (
	"etcdimg/layout"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// deviceWait bounds how long firstboot waits for block devices to appear
// after their drivers load.
const deviceWait = 10 * time.Second

// blockDev is one entry of /sys/class/block.
type blockDev struct {
	Name     string // vda, vda1
	Partname string // GPT partition name
	IsPart   bool
	Parent   string // for a partition, its disk
	// FSType and Label, probed on whole disks only when picking the data
	// disk: "ext4" "etcd-data" is a data disk this appliance formatted,
	// a "config-2" label an OpenStack config drive.
	FSType, Label string
}

func (b blockDev) Path() string { return "/dev/" + b.Name }

// listBlock reads /sys/class/block.
func listBlock() ([]blockDev, error) {
	entries, err := os.ReadDir("/sys/class/block")
	if err != nil {
		return nil, err
	}
	var devs []blockDev
	for _, e := range entries {
		d := blockDev{Name: e.Name()}
		ue, err := os.ReadFile(filepath.Join("/sys/class/block", e.Name(), "uevent"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(ue), "\n") {
			k, v, _ := strings.Cut(line, "=")
			switch k {
			case "DEVTYPE":
				d.IsPart = v == "partition"
			case "PARTNAME":
				d.Partname = v
			}
		}
		if d.IsPart {
			if target, err := filepath.EvalSymlinks(filepath.Join("/sys/class/block", e.Name())); err == nil {
				d.Parent = filepath.Base(filepath.Dir(target))
			}
		}
		devs = append(devs, d)
	}
	slices.SortFunc(devs, func(a, b blockDev) int { return strings.Compare(a.Name, b.Name) })
	return devs, nil
}

// waitForPartition returns the device of the partition named label,
// waiting (bounded) for the disk drivers to publish it.
func waitForPartition(label string) (string, error) {
	deadline := time.Now().Add(deviceWait)
	for {
		devs, err := listBlock()
		if err == nil {
			for _, d := range devs {
				if d.IsPart && d.Partname == label {
					return d.Path(), nil
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no partition named %s", label)
		}
		time.Sleep(100 * time.Millisecond)
	}
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
