// Package blockdev lists the block devices the kernel publishes in
// /sys/class/block and finds partitions by their GPT names, for both
// programs of a boot: the initramfs's /init (package preinit), which
// finds the ESP to run the node binary from, and firstboot, which finds
// the data disk and the restore partition.
package blockdev

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// SysBlock is where the kernel lists block devices.
const SysBlock = "/sys/class/block"

// Dev is one entry of SysBlock.
type Dev struct {
	Name     string // vda, vda1
	Partname string // GPT partition name
	IsPart   bool
	Parent   string // for a partition, its disk
	// FSType and Label, probed on whole disks only when picking the data
	// disk: "ext4" "etcd-data" is a data disk this appliance formatted,
	// a "config-2" label an OpenStack config drive.
	FSType, Label string
}

func (d Dev) Path() string { return "/dev/" + d.Name }

// List reads sysBlock's entries and their uevent files, sorted by name.
func List(sysBlock string) ([]Dev, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, err
	}
	var devs []Dev
	for _, e := range entries {
		d := Dev{Name: e.Name()}
		ue, err := os.ReadFile(filepath.Join(sysBlock, e.Name(), "uevent"))
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
			if target, err := filepath.EvalSymlinks(filepath.Join(sysBlock, e.Name())); err == nil {
				d.Parent = filepath.Base(filepath.Dir(target))
			}
		}
		devs = append(devs, d)
	}
	slices.SortFunc(devs, func(a, b Dev) int { return strings.Compare(a.Name, b.Name) })
	return devs, nil
}

// Partition returns the device of the first partition (by kernel name)
// whose GPT name is label.
func Partition(devs []Dev, label string) (string, bool) {
	for _, d := range devs {
		if d.IsPart && d.Partname == label {
			return d.Path(), true
		}
	}
	return "", false
}

// WaitForPartition returns the device of the partition named label,
// waiting at most wait for the disk drivers to publish it (NVMe, for
// one, probes in the background).
func WaitForPartition(label string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		if devs, err := List(SysBlock); err == nil {
			if dev, ok := Partition(devs, label); ok {
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no partition named %s", label)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
