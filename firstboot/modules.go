package firstboot

import (
	"errors"
	"etcdimg/layout"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// loadModules loads every module in the image's load order. A module that
// fails (say, a cloud NIC driver on QEMU) is reported and skipped: only
// what the boot then lacks stops it.
func loadModules() (string, error) {
	list, err := os.ReadFile(layout.ModuleOrder)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", layout.ModuleOrder, err)
	}
	loaded, skipped := 0, []string{}
	for _, name := range strings.Fields(string(list)) {
		if err := loadModule(filepath.Join(layout.ModuleDir, name)); err != nil {
			skipped = append(skipped, fmt.Sprintf("%s (%v)", name, err))
			continue
		}
		loaded++
	}
	detail := fmt.Sprintf("%d loaded", loaded)
	if len(skipped) > 0 {
		detail += ", skipped: " + strings.Join(skipped, ", ")
	}
	return detail, nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}
