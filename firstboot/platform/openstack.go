package platform

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"etcdimg/firstboot/internal/blockdev"
	"etcdimg/internal/layout"
)

func init() {
	// The config drive first; the metadata service for clouds without one.
	register(&Platform{
		Name: layout.PlatformOpenStack, Cloud: true,
		sources: func() []Source {
			return []Source{configDrive{}, openstackMetadata{metadataClient(layout.MetadataAddr)}}
		},
	})
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
		if d.IsPart || !(blockdev.IsDiskName(d.Name) || strings.HasPrefix(d.Name, "sr")) {
			continue
		}
		fstype, label := blockdev.ProbeDevice(d.Name)
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

// openstackMetadata is OpenStack's metadata service, for clouds without
// a config drive.
type openstackMetadata struct{ md metadata }

func (openstackMetadata) Name() string { return "OpenStack metadata user_data" }

func (s openstackMetadata) Fetch() ([]byte, error) {
	b, _, err := s.md.do(http.MethodGet, "/openstack/latest/user_data", nil, nil)
	return b, err
}
