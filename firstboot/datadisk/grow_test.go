package datadisk

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestGrowResizesTheFileSystemOnline: the appliance's own first format
// on 256 MiB, the disk enlarged to 768 MiB while "off", mounted
// read-write: Grow resizes the file system online to fill the disk but
// its last MiB, keeps the files, e2fsck finds it clean, and a second
// Grow has nothing to do. A disk shrunk under its file system is refused.
func TestGrowResizesTheFileSystemOnline(t *testing.T) {
	img := sparse(t, 256<<20)
	if err := format(t, img); err != nil {
		t.Fatal(err)
	}
	if err := ClearIntent(img); err != nil {
		t.Fatal(err)
	}
	if said, err := Grow(img, "/nonexistent"); said != "" || err != nil {
		t.Errorf("Grow of a disk its file system fills: %q, %v", said, err)
	}
	if !hasCapSysResource(t) {
		// The kernel resizes only for CAP_SYS_RESOURCE, which this
		// machine's root lacks; PID 1 in the appliance has it, and the
		// e2e test grows a member's disk there.
		t.Skip("no CAP_SYS_RESOURCE here: the kernel refuses online resize (EXT4_IOC_RESIZE_FS); the e2e test covers it")
	}
	if err := os.Truncate(img, 768<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	dir := t.TempDir()
	if err := unix.Mount(dev, dir, "ext4", dataMountFlags, ""); err != nil {
		t.Fatalf("mount: %v", err)
	}
	mounted := true
	defer func() {
		if mounted {
			unix.Unmount(dir, 0)
		}
	}()
	if err := os.WriteFile(filepath.Join(dir, "kept"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := fsBytes(t, dir)
	said, err := Grow(dev, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(said)
	if !strings.Contains(said, "from 255 to 767 MiB") {
		t.Errorf("Grow said %q", said)
	}
	if after := fsBytes(t, dir); after < before+500<<20 {
		t.Errorf("file system %d MiB → %d MiB", before>>20, after>>20)
	}
	if said, err := Grow(dev, dir); said != "" || err != nil {
		t.Errorf("second Grow: %q, %v", said, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "kept")); string(b) != "data" {
		t.Errorf("kept: %q, %v", b, err)
	}
	if err := unix.Unmount(dir, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	if b, err := exec.Command("e2fsck", "-fn", dev).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn: %v\n%s", err, b)
	}
}

// TestGrowRefusesADiskSmallerThanItsFileSystem: a disk shrunk under its
// file system (a wrong volume, or a truncated copy) is named, not
// resized.
func TestGrowRefusesADiskSmallerThanItsFileSystem(t *testing.T) {
	img := sparse(t, 256<<20)
	if err := format(t, img); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 128<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := Grow(img, "/nonexistent"); err == nil || !strings.Contains(err.Error(), "is 128 MiB, smaller than its 255 MiB file system") {
		t.Errorf("Grow on a shrunk disk: %v", err)
	}
}

// hasCapSysResource says whether this process may resize a file system.
func hasCapSysResource(t *testing.T) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && n&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}

// fsBytes is the size of the file system mounted on dir.
func fsBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * int64(st.Bsize)
}

// TestTheFirstFormatIsCleanAndGrowable: the appliance's own first
// format, small disks (1 KiB blocks) and large (4 KiB), is clean for
// e2fsck and carries no resize inode (go-diskfs's is invalid on small
// disks, and the kernel would refuse to grow through it).
func TestTheFirstFormatIsCleanAndGrowable(t *testing.T) {
	for _, size := range []int64{256 << 20, 512 << 20, 513 << 20, 1 << 30} {
		img := sparse(t, size)
		if err := format(t, img); err != nil {
			t.Fatal(err)
		}
		if err := ClearIntent(img); err != nil {
			t.Fatal(err)
		}
		if b, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
			t.Errorf("%d MiB: e2fsck -fn: %v\n%s", size>>20, err, b)
		}
		b, err := exec.Command("dumpe2fs", "-h", img).Output()
		if err != nil {
			t.Fatalf("dumpe2fs: %v", err)
		}
		if strings.Contains(string(b), "resize_inode") {
			t.Errorf("%d MiB: the file system has a resize inode", size>>20)
		}
	}
}

// TestCheckGeometry: a disk ours by its label is refused before it is
// mounted when it is smaller than its file system, or when it was
// enlarged after a first format that did not finish (that format's
// record lies at the file system's end); a disk enlarged after a
// finished format, and one as formatted, pass.
func TestCheckGeometry(t *testing.T) {
	for _, tc := range []struct {
		name   string
		clear  bool  // the first format finished (ClearIntent)
		resize int64 // the disk's new size (0: as formatted)
		want   string
	}{
		{"as formatted", true, 0, ""},
		{"enlarged after a finished format", true, 768 << 20, ""},
		{"enlarged after an interrupted format", false, 768 << 20, "carries a first-format record of c/etcd-1 for a 268435456-byte disk at its file system's end, but is 805306368 bytes"},
		{"enlarged by a block after an interrupted format", false, 256<<20 + 4096, "the first format did not finish before the disk was enlarged"},
		{"smaller than its file system", true, 128 << 20, "the disk is 128 MiB, smaller than its 255 MiB file system"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := sparse(t, 256<<20)
			if err := format(t, img); err != nil {
				t.Fatal(err)
			}
			if tc.clear {
				if err := ClearIntent(img); err != nil {
					t.Fatal(err)
				}
			}
			if tc.resize != 0 {
				if err := os.Truncate(img, tc.resize); err != nil {
					t.Fatal(err)
				}
			}
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fi, _ := f.Stat()
			err = checkGeometry(f, fi.Size())
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("checkGeometry: %v, want %q", err, tc.want)
			}
		})
	}
}
