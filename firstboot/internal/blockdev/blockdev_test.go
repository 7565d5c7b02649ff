package blockdev

import (
	"os"
	"path/filepath"
	"testing"
)

// TestFindPartitionByGPTName reads uevent files laid out as the kernel's
// /sys/class/block: the ESP is the partition whose PARTNAME is the label,
// never a whole disk and never a partition of another name.
func TestFindPartitionByGPTName(t *testing.T) {
	for _, c := range []struct {
		name   string
		uevent map[string]string
		want   string
	}{
		{"virtio boot disk", map[string]string{
			"vda":  "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
			"vda1": "MAJOR=254\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=ESP\n",
			"vda2": "DEVNAME=vda2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=etcd-restore\n",
			"vdb":  "DEVNAME=vdb\nDEVTYPE=disk\n",
		}, "/dev/vda1"},
		{"NVMe, data disk first", map[string]string{
			"nvme0n1":   "DEVTYPE=disk\n",
			"nvme0n1p1": "DEVTYPE=partition\nPARTNAME=etcd-data\n",
			"nvme1n1":   "DEVTYPE=disk\n",
			"nvme1n1p1": "DEVTYPE=partition\nPARTNAME=ESP\n",
		}, "/dev/nvme1n1p1"},
		{"two boot disks: the first by name", map[string]string{
			"vdb1": "DEVTYPE=partition\nPARTNAME=ESP\n",
			"vda1": "DEVTYPE=partition\nPARTNAME=ESP\n",
		}, "/dev/vda1"},
		{"a whole disk named ESP is not a partition", map[string]string{
			"vda": "DEVTYPE=disk\nPARTNAME=ESP\n",
		}, ""},
		{"no ESP yet", map[string]string{
			"vda":  "DEVTYPE=disk\n",
			"vda1": "DEVTYPE=partition\nPARTNAME=esp\n",
		}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, ue := range c.uevent {
				os.MkdirAll(filepath.Join(dir, name), 0o755)
				os.WriteFile(filepath.Join(dir, name, "uevent"), []byte(ue), 0o644)
			}
			devs, err := List(dir)
			if err != nil {
				t.Fatal(err)
			}
			got, ok := Partition(devs, "ESP")
			if got != c.want || ok != (c.want != "") {
				t.Errorf("Partition = %q, %v; want %q", got, ok, c.want)
			}
		})
	}
}
