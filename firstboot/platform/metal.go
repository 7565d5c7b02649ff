package platform

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"etcdimg/firstboot/internal/blockdev"
	"etcdimg/firstboot/internal/kernelfs"
	"etcdimg/internal/layout"
)

func init() {
	// The config embedded in the image.
	register(&Platform{Name: layout.PlatformMetal, sources: func() []Source { return []Source{espFile{}} }})
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
		dev, err := blockdev.WaitForPartition(layout.ESPLabel, blockdev.DeviceWait)
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
