package datadisk

import (
	"os"

	"etcdimg/firstboot/internal/blockdev"
	"etcdimg/internal/layout"
)

// probeDataDisk probes /dev/NAME for the data disk's picking: as
// blockdev.ProbeDevice, except that a disk whose first format did not finish
// (it carries the first-format record) has no label yet: it never held
// data, and is taken only as a blank disk is.
func probeDataDisk(name string) (string, string) {
	f, err := os.Open("/dev/" + name)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	fstype, label := blockdev.ProbeFS(f)
	if fstype == "ext4" && label == layout.DataLabel && interruptedFormat(f) {
		return fstype, ""
	}
	return fstype, label
}
