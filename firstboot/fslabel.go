package firstboot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"etcdimg/internal/layout"
)

// probeFS names the file system at the start of r and its label, for the
// three kinds the appliance meets on a whole disk: ext4 (its data disk),
// vfat and ISO 9660 (an OpenStack config drive). It returns "" for
// anything else, a blank disk included.
func probeFS(r io.ReaderAt) (fstype, label string) {
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

// probeDevice probes /dev/NAME.
func probeDevice(name string) (string, string) {
	f, err := os.Open("/dev/" + name)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	return probeFS(f)
}

// probeDataDisk probes /dev/NAME for the data disk's picking: as
// probeDevice, except that a disk whose first format did not finish
// (it carries the first-format record) has no label yet: it never held
// data, and is taken only as a blank disk is.
func probeDataDisk(name string) (string, string) {
	f, err := os.Open("/dev/" + name)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	fstype, label := probeFS(f)
	if fstype == "ext4" && label == layout.DataLabel && interruptedFormat(f) {
		return fstype, ""
	}
	return fstype, label
}

// configDrive is OpenStack's config drive: a vfat or ISO 9660 file
// system labelled config-2, on a disk or a CD-ROM, holding
// openstack/latest/user_data.
type configDrive struct{}

func (configDrive) Name() string { return "OpenStack config drive" }

const configDriveMount = "/run/config-drive"

func (configDrive) Fetch() ([]byte, error) {
	devs, err := listBlock()
	if err != nil {
		return nil, err
	}
	for _, d := range devs {
		if d.IsPart || !(isDiskName(d.Name) || strings.HasPrefix(d.Name, "sr")) {
			continue
		}
		fstype, label := probeDevice(d.Name)
		if fstype == "ext4" || !strings.EqualFold(label, layout.ConfigDriveLabel) {
			continue
		}
		if err := os.MkdirAll(configDriveMount, 0o700); err != nil {
			return nil, err
		}
		opts := ""
		if fstype == "vfat" {
			opts = "codepage=437,iocharset=ascii"
		}
		if err := unix.Mount(d.Path(), configDriveMount, fstype, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, opts); err != nil {
			return nil, fmt.Errorf("mount %s (%s, %s) read-only: %w", d.Path(), fstype, label, err)
		}
		b, err := os.ReadFile(filepath.Join(configDriveMount, "openstack", "latest", "user_data"))
		unix.Unmount(configDriveMount, 0)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s is a config drive without openstack/latest/user_data: %w", d.Path(), errNotFound)
		}
		return b, err
	}
	return nil, errNotFound
}
