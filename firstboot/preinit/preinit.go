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
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"etcdimg/firstboot/internal/blockdev"
	"etcdimg/firstboot/internal/console"
	"etcdimg/firstboot/internal/kernelfs"
	"etcdimg/firstboot/internal/kmod"
	"etcdimg/internal/layout"
)

// deviceWait bounds the wait for the boot disk's drivers to publish the
// ESP.
const deviceWait = 30 * time.Second

// stopWait is how long a boot that cannot go on shows its console line
// before it powers off. Nothing has touched a disk by then.
const stopWait = 5 * time.Minute

// Main is /init. It never returns.
func Main() {
	console.Logf("etcdimg appliance starting (pid %d)", os.Getpid())
	err := console.Step("mount kernel file systems", func() (string, error) { return kernelfs.Mount("/proc", "/sys", "/dev") })
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

// mountESP mounts the ESP read-only where the node binary is run from.
// Its files are root's alone: the member's config on it holds the
// member's private key.
func mountESP() (string, error) {
	dev, err := blockdev.WaitForPartition(layout.ESPLabel, deviceWait)
	if err != nil {
		return "", fmt.Errorf("%w after %s: the boot disk's driver is missing, or the disk is not an etcdimg image", err, deviceWait)
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
