package firstboot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"etcdimg/firstboot/datadisk"
	"etcdimg/firstboot/internal/blockdev"
	"etcdimg/firstboot/internal/kernelfs"
	"etcdimg/ignition/ign"
	"etcdimg/internal/layout"
)

// A Source is one place a member's config may come from. Fetch returns
// errNotFound when the source holds no config. Adding a cloud is adding a
// Source.
type Source interface {
	Name() string
	Fetch() ([]byte, error)
}

// readConfig takes the first config found and validates it with
// Ignition's own parser.
func readConfig(sources []Source) (ign.Config, string, error) {
	for _, s := range sources {
		raw, err := s.Fetch()
		if errors.Is(err, errNotFound) {
			continue
		}
		if err != nil {
			return ign.Config{}, "", fmt.Errorf("%s: %w", s.Name(), err)
		}
		cfg, err := ign.Parse(raw)
		if err != nil {
			return ign.Config{}, "", fmt.Errorf("config from %s: %w", s.Name(), err)
		}
		return cfg, fmt.Sprintf("%s, %d bytes, Ignition %s", s.Name(), len(raw), cfg.Ignition.Version), nil
	}
	return ign.Config{}, "", errors.New("no config: neither fw_cfg opt/com.coreos/config nor the image's /etcdimg/node.ign is present")
}

// fwCfg is QEMU's -fw_cfg name=opt/com.coreos/config, the key Fedora
// CoreOS and Flatcar read too.
type fwCfg struct{}

const fwCfgPath = "/sys/firmware/qemu_fw_cfg/by_name/opt/com.coreos/config/raw"

func (fwCfg) Name() string { return "fw_cfg opt/com.coreos/config" }

func (fwCfg) Fetch() ([]byte, error) {
	b, err := os.ReadFile(fwCfgPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNotFound
	}
	return b, err
}

// espFile is the config the image builder put on the EFI system
// partition, mounted read-only for the read.
type espFile struct{}

// espMount is where the ESP is mounted read-only: by the initramfs's
// /init, which runs the node binary from it, or else for the read.
const espMount = layout.ESPMount

func (espFile) Name() string { return "ESP " + layout.ConfigPath }

func (espFile) Fetch() ([]byte, error) {
	if !kernelfs.Mounted(espMount) {
		dev, err := datadisk.WaitForPartition(layout.ESPLabel)
		if err != nil {
			return nil, errNotFound
		}
		if err := unix.Mount(dev, espMount, "vfat", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "codepage=437,iocharset=ascii"); err != nil {
			return nil, fmt.Errorf("mount %s read-only: %w", dev, err)
		}
		defer unix.Unmount(espMount, 0)
	}
	b, err := os.ReadFile(filepath.Join(espMount, layout.ConfigPath))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNotFound
	}
	return b, err
}

// configDrive is OpenStack's config drive: a vfat or ISO 9660 file
// system labelled config-2, on a disk or a CD-ROM, holding
// openstack/latest/user_data.
type configDrive struct{}

func (configDrive) Name() string { return "OpenStack config drive" }

const configDriveMount = "/run/config-drive"

func (configDrive) Fetch() ([]byte, error) {
	devs, err := blockdev.List(blockdev.SysBlock)
	if err != nil {
		return nil, err
	}
	for _, d := range devs {
		if d.IsPart || !(datadisk.IsDiskName(d.Name) || strings.HasPrefix(d.Name, "sr")) {
			continue
		}
		fstype, label := datadisk.ProbeDevice(d.Name)
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
