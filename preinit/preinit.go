// Package preinit is the initramfs's /init (cmd/etcdinit): the first
// part of every boot. It mounts the kernel's file systems, loads the
// modules the machine needs, mounts the EFI system partition read-only
// and runs the node binary from it as PID 1, where firstboot goes on.
//
// The node binary (etcd, its tools and firstboot, 30 MiB) is not in the
// initramfs because the kernel unpacks every byte of an initramfs into
// memory it cannot reclaim, at every boot: under TCG that took a member
// over a second. From the ESP its pages are read as they run, into a
// cache the kernel can reclaim.
package preinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"etcdimg/console"
	"etcdimg/kmod"
	"etcdimg/layout"
)

// deviceWait bounds the wait for the boot disk's drivers to publish the
// ESP (NVMe probes in the background).
const deviceWait = 30 * time.Second

// stopWait is how long a boot that cannot go on shows its console line
// before it powers off. Nothing has touched a disk by then.
const stopWait = 5 * time.Minute

// Main is /init. It never returns.
func Main() {
	console.Logf("etcdimg appliance starting (pid %d)", os.Getpid())
	err := console.Step("mount kernel file systems", mountKernelFS)
	if err == nil {
		err = console.Step("load modules", kmod.Load)
	}
	if err == nil {
		err = console.Step("mount the ESP", mountESP)
	}
	if err == nil {
		// argv[0] "/init" makes the multi-call binary run firstboot.
		err = fmt.Errorf("run %s: %w", layout.NodeBinary, unix.Exec(layout.NodeBinary, []string{"/init"}, os.Environ()))
	}
	console.Logf("%s %v", console.Stopped, err)
	console.Logf("no disk was written; powering off in %s", stopWait)
	time.Sleep(stopWait)
	unix.Sync()
	for {
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		time.Sleep(time.Second)
	}
}

// kernelFS is what the modules and the partition lookup need; firstboot
// mounts the rest.
var kernelFS = []struct{ source, target, fstype, data string }{
	{"proc", "/proc", "proc", ""},
	{"sysfs", "/sys", "sysfs", ""},
	{"devtmpfs", "/dev", "devtmpfs", "mode=0755"},
}

func mountKernelFS() (string, error) {
	var done []string
	for _, m := range kernelFS {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return "", err
		}
		if err := unix.Mount(m.source, m.target, m.fstype, unix.MS_NOSUID, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return "", fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
		done = append(done, m.target)
	}
	return strings.Join(done, " "), nil
}

// mountESP mounts the ESP read-only where the node binary is run from.
// Its files are root's alone: the member's config on it holds the
// member's private key.
func mountESP() (string, error) {
	var dev string
	deadline := time.Now().Add(deviceWait)
	for {
		var err error
		if dev, err = findPartition("/sys/class/block", layout.ESPLabel); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%w after %s: the boot disk's driver is missing, or the disk is not an etcdimg image", err, deviceWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := os.MkdirAll(layout.ESPMount, 0o755); err != nil {
		return "", err
	}
	opts := "codepage=437,iocharset=ascii,uid=0,gid=0,fmask=0077,dmask=0077"
	if err := unix.Mount(dev, layout.ESPMount, "vfat", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return "", fmt.Errorf("mount %s read-only on %s: %w", dev, layout.ESPMount, err)
	}
	st, err := os.Stat(layout.NodeBinary)
	if err != nil {
		unix.Unmount(layout.ESPMount, 0)
		return "", fmt.Errorf("the ESP on %s holds no %s: rebuild the image with this etcdimg (%w)", dev, layout.NodeBinaryPath, err)
	}
	return fmt.Sprintf("%s read-only on %s; node binary %.1f MiB", dev, layout.ESPMount, float64(st.Size())/(1<<20)), nil
}

// findPartition returns the device of the first partition (by kernel
// name) whose GPT name is label, from the kernel's uevent files under
// sysBlock (/sys/class/block).
func findPartition(sysBlock, label string) (string, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return "", err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(sysBlock, name, "uevent"))
		if err != nil {
			continue
		}
		kv := map[string]string{}
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				kv[k] = v
			}
		}
		if kv["DEVTYPE"] == "partition" && kv["PARTNAME"] == label {
			return "/dev/" + name, nil
		}
	}
	return "", fmt.Errorf("no partition named %s", label)
}
