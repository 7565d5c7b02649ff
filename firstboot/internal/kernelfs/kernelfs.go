// Package kernelfs mounts the kernel's file systems PID 1 needs, with
// the same flags whichever program mounts them: the initramfs's /init
// (package preinit) mounts /proc, /sys and /dev, and firstboot, which
// replaces it as PID 1, the rest.
package kernelfs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// table is what PID 1 mounts before anything else, in order. devtmpfs
// is built into the kernel but not mounted automatically.
var table = []struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
}

// Mount mounts the named targets of the table (all of them when none
// is named) that are not mounted yet, and returns those it mounted.
func Mount(targets ...string) (string, error) {
	var done []string
	for _, m := range table {
		if len(targets) > 0 && !slices.Contains(targets, m.target) {
			continue
		}
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return "", err
		}
		if Mounted(m.target) {
			continue
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && err != unix.EBUSY {
			return "", fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
		done = append(done, m.target)
	}
	return strings.Join(done, " "), nil
}

// Mounted reports whether a file system is mounted on dir: dir and its
// parent are on different devices.
func Mounted(dir string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(dir), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}
