package platform

import (
	"errors"
	"io/fs"
	"os"

	"etcdimg/internal/layout"
)

func init() {
	// QEMU's fw_cfg first, so that one base image can serve every
	// member, then the config embedded in the image.
	register(&Platform{Name: layout.PlatformQEMU, sources: func() []Source { return []Source{fwCfg{}, espFile{}} }})
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
