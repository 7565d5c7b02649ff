// Package preinit is the initramfs's /init (cmd/etcdinit): the first
// part of every boot. It mounts the kernel's file systems, loads the
// modules the machine needs, mounts the EFI system partition read-only
// and runs the node binary of the slot that booted from it as PID 1,
// where firstboot goes on.
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
	"path/filepath"
	"strings"
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
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if onTrial() {
		// A slot on trial that cannot start spends a try: systemd-boot
		// boots the slot before it once they are spent.
		console.Logf("no disk was written; the slot is on trial: rebooting in 5s")
		time.Sleep(5 * time.Second)
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	} else {
		console.Logf("no disk was written; powering off in %s", stopWait)
		time.Sleep(stopWait)
	}
	unix.Sync()
	for {
		unix.Reboot(cmd)
		time.Sleep(time.Second)
	}
}

// onTrial reports whether the slot that booted is on trial: its boot
// entry still counts tries.
func onTrial() bool {
	id := slotID()
	des, err := os.ReadDir(filepath.Join(layout.ESPRoot, layout.EntryDir))
	if id == "" || err != nil {
		return false
	}
	// The names are slot.Entry's (etcdimg-GEN-ID+TRIES...efi), read
	// here without package slot, whose crypto would weigh on every boot
	// in the initramfs.
	for _, de := range des {
		if n := strings.ToLower(de.Name()); strings.HasPrefix(n, "etcdimg-") && strings.Contains(n, "-"+id+"+") && strings.HasSuffix(n, ".efi") {
			return true
		}
	}
	return false
}

// slotID is the slot the kernel command line names.
func slotID() string {
	b, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, layout.SlotArg+"="); ok && len(v) == 16 && strings.Trim(v, "0123456789abcdef") == "" {
			return v
		}
	}
	return ""
}

// mountESP mounts the ESP read-only on layout.ESPRoot and binds the
// booted slot's directory, read-only, where the node binary is run from
// (layout.NodeBinary). Its files are root's alone: the member's config
// on it holds the member's private key.
func mountESP() (string, error) {
	id := slotID()
	if id == "" {
		return "", fmt.Errorf("the kernel command line names no boot slot (%s=ID): the image was not built by this etcdimg", layout.SlotArg)
	}
	dev, err := blockdev.WaitForPartition(layout.ESPLabel, deviceWait)
	if err != nil {
		return "", fmt.Errorf("%w after %s: the boot disk's driver is missing, or the disk is not an etcdimg image", err, deviceWait)
	}
	slotDir := filepath.Join(layout.ESPMount, layout.ConfigDir)
	for _, d := range []string{layout.ESPRoot, slotDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
	}
	opts := "codepage=437,iocharset=ascii,uid=0,gid=0,fmask=0077,dmask=0077"
	if err := unix.Mount(dev, layout.ESPRoot, "vfat", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return "", fmt.Errorf("mount %s read-only on %s: %w", dev, layout.ESPRoot, err)
	}
	src := filepath.Join(layout.ESPRoot, layout.SlotsDir, id)
	if err := unix.Mount(src, slotDir, "", unix.MS_BIND, ""); err != nil {
		return "", fmt.Errorf("bind slot %s on %s: %w", id, slotDir, err)
	}
	// A bind mount takes its own read-only flag with a remount: the ESP
	// under it is made writable while an update is written.
	if err := unix.Mount("", slotDir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return "", fmt.Errorf("bind slot %s read-only: %w", id, err)
	}
	st, err := os.Stat(layout.NodeBinary)
	if err != nil {
		return "", fmt.Errorf("the ESP on %s holds no %s for slot %s: rebuild the image with this etcdimg (%w)", dev, layout.NodeBinaryPath, id, err)
	}
	return fmt.Sprintf("%s read-only on %s; slot %s; node binary %.1f MiB", dev, layout.ESPRoot, id, float64(st.Size())/(1<<20)), nil
}
