package platform

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"etcdimg/firstboot/internal/kernelfs"
	"etcdimg/internal/layout"
)

func init() {
	// The config embedded in the image.
	register(&Platform{Name: layout.PlatformMetal, sources: func() []Source { return []Source{espFile{}} }})
}

// espFile is the config the image builder put on the EFI system
// partition, in the booted slot's directory: the initramfs's /init
// binds it, read-only, on espMount+layout.ConfigDir. A generic cloud
// image's slot has none; a slot an upgrade installed on a cloud member
// has the member's (readCloudConfig).
type espFile struct{}

const espMount = layout.ESPMount

func (espFile) Name() string { return "ESP " + layout.ConfigPath }

func (espFile) Fetch() ([]byte, error) {
	if !kernelfs.Mounted(filepath.Join(espMount, layout.ConfigDir)) {
		return nil, errNotFound
	}
	b, err := os.ReadFile(filepath.Join(espMount, layout.ConfigPath))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNotFound
	}
	return b, err
}
