package firstboot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"etcdimg/layout"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
	"golang.org/x/sys/unix"
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
	for _, d := range devs {
		if d.IsPart || boot[d.Name] || hasParts[d.Name] || !isDiskName(d.Name) {
			continue
		}
		return d.Path(), true
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

// Disk contents, as firstboot classifies them.
const (
	contentBlank = "blank"
	contentExt4  = "ext4"
)

// inspect classifies what dev holds: blank (its first and last MiB are
// zero), ext4, or something else, which firstboot never touches.
func inspect(dev string) (string, error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return "", err
	}
	const window = 1 << 20
	head := make([]byte, min(window, size))
	if _, err := f.ReadAt(head, 0); err != nil {
		return "", err
	}
	return classify(head, func() ([]byte, error) {
		tail := make([]byte, min(window, size))
		_, err := f.ReadAt(tail, size-int64(len(tail)))
		return tail, err
	})
}

func classify(head []byte, tail func() ([]byte, error)) (string, error) {
	if len(head) >= 1082 && binary.LittleEndian.Uint16(head[1080:1082]) == 0xEF53 {
		return contentExt4, nil
	}
	if !allZero(head) {
		return "", fmt.Errorf("it holds data that is not an ext4 file system (%s)", describe(head))
	}
	t, err := tail()
	if err != nil {
		return "", err
	}
	if !allZero(t) {
		return "", errors.New("its first MiB is blank but its last MiB is not (a backup partition table?)")
	}
	return contentBlank, nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// describe names common signatures, for the message that refuses a disk.
func describe(head []byte) string {
	at := func(off int, sig string) bool {
		return len(head) >= off+len(sig) && bytes.Equal(head[off:off+len(sig)], []byte(sig))
	}
	switch {
	case at(512, "EFI PART"):
		return "a GPT partition table"
	case at(0, "XFSB"):
		return "XFS"
	case at(65600, "_BHRfS_M"):
		return "btrfs"
	case at(0, "LUKS\xba\xbe"):
		return "LUKS"
	case at(82, "FAT32") || at(54, "FAT1"):
		return "FAT"
	case at(4086, "SWAPSPACE2"):
		return "swap"
	case at(510, "\x55\xaa"):
		return "an MBR partition table"
	}
	return "unknown data"
}

// prepareDataDisk finds the data disk, formats it only if blank, and
// mounts it at dir.
func prepareDataDisk(dir string) (dev, detail string, err error) {
	dev, err = findDataDisk()
	if err != nil {
		return "", "", err
	}
	content, err := inspect(dev)
	if err != nil {
		return "", "", fmt.Errorf("data disk %s: %w; not formatting it", dev, err)
	}
	action := "existing ext4"
	if content == contentBlank {
		start := time.Now()
		if err := formatExt4(dev); err != nil {
			return "", "", fmt.Errorf("format %s: %w", dev, err)
		}
		action = fmt.Sprintf("blank, formatted ext4 in %s", time.Since(start).Round(time.Millisecond))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	if err := unix.Mount(dev, dir, "ext4", unix.MS_NOATIME|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return "", "", fmt.Errorf("mount %s on %s: %w", dev, dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", "", err
	}
	return dev, fmt.Sprintf("%s: %s, mounted on %s", dev, action, dir), nil
}

// dataInodeRatio is one inode per 64 KiB: etcd keeps tens of files (the
// bolt db, WAL segments, snapshots), so the default 8 KiB ratio only adds
// inode table to write at first boot (64 MiB written on 1 GiB, against 36).
const dataInodeRatio = 64 << 10

// formatExt4 writes an ext4 file system labelled etcd-data over the whole
// of dev, with go-diskfs (the appliance ships no mkfs).
func formatExt4(dev string) error {
	d, err := diskfs.Open(dev, diskfs.WithOpenMode(diskfs.ReadWriteExclusive))
	if err != nil {
		return err
	}
	defer d.Close()
	if _, err := ext4.Create(d.Backend, d.Size, 0, d.LogicalBlocksize, &ext4.Params{VolumeName: layout.DataLabel, InodeRatio: dataInodeRatio}); err != nil {
		return err
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
