package firstboot

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// kernelFS is what PID 1 mounts before anything else, in order. devtmpfs
// is built into the kernel but not mounted automatically.
var kernelFS = []struct {
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

// mountKernelFS mounts what is not mounted yet: the initramfs's /init
// (package preinit) mounted /proc, /sys and /dev before it ran this
// binary.
func mountKernelFS() (string, error) {
	var done []string
	for _, m := range kernelFS {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return "", err
		}
		if mounted(m.target) {
			continue
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && err != unix.EBUSY {
			return "", fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
		done = append(done, m.target)
	}
	return strings.Join(done, " "), nil
}

// mounted reports whether a file system is mounted on dir: dir and its
// parent are on different devices.
func mounted(dir string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(dir), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}
