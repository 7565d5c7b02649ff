package blockdev

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"strings"
	"time"
)

// DeviceWait bounds how long the appliance waits for block devices to
// appear after their drivers load: on metal and in clouds a volume may be
// enumerated after an instance store.
const DeviceWait = 10 * time.Second

// IsDiskName reports whether a block device's name is a disk's (virtio,
// SCSI/SATA, Xen, NVMe, IDE), not a loop, RAM or optical device's.
func IsDiskName(n string) bool {
	for _, p := range []string{"vd", "sd", "xvd", "nvme", "hd"} {
		if strings.HasPrefix(n, p) {
			return true
		}
	}
	return false
}

// ProbeFS names the file system at the start of r and its label, for the
// three kinds the appliance meets on a whole disk: ext4 (its data disk),
// vfat and ISO 9660 (an OpenStack config drive). It returns "" for
// anything else, a blank disk included.
func ProbeFS(r io.ReaderAt) (fstype, label string) {
	buf := make([]byte, 2048)
	if n, _ := r.ReadAt(buf[:1024], 1024); n == 1024 && binary.LittleEndian.Uint16(buf[56:]) == 0xEF53 {
		return "ext4", cString(buf[120:136])
	}
	if n, _ := r.ReadAt(buf[:512], 0); n == 512 && buf[510] == 0x55 && buf[511] == 0xAA {
		switch {
		case string(buf[82:87]) == "FAT32":
			return "vfat", strings.Trim(string(buf[71:82]), " \x00")
		case string(buf[54:57]) == "FAT":
			return "vfat", strings.Trim(string(buf[43:54]), " \x00")
		}
	}
	if n, _ := r.ReadAt(buf[:2048], 32768); n == 2048 && buf[0] == 1 && string(buf[1:6]) == "CD001" {
		return "iso9660", strings.Trim(string(buf[40:72]), " \x00")
	}
	return "", ""
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// ProbeDevice probes /dev/NAME: its file system and label, as ProbeFS
// names them (an OpenStack config drive is found so).
func ProbeDevice(name string) (string, string) {
	f, err := os.Open("/dev/" + name)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	return ProbeFS(f)
}
