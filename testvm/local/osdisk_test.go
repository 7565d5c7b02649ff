package local

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"etcdimg/internal/outdir"
)

// writeImage writes an 8 MiB image at path: a GPT-like first sector, a
// 1 MiB chunk of written zeros, one byte in an otherwise empty chunk,
// 1 MiB of data, and holes elsewhere (the last 3 MiB among them). It
// returns its bytes.
func writeImage(t *testing.T, path string, fill byte) []byte {
	t.Helper()
	const mib = 1 << 20
	img := make([]byte, 8*mib)
	copy(img, "EFI PART")
	img[3*mib+12345] = fill
	for i := 4 * mib; i < 5*mib; i++ {
		img[i] = byte(i) ^ fill
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, r := range [][2]int{{0, 512}, {mib, 2 * mib}, {3 * mib, 5 * mib}} {
		if _, err := f.WriteAt(img[r[0]:r[1]], int64(r[0])); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(int64(len(img))); err != nil {
		t.Fatal(err)
	}
	return img
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func blocks(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks
}

// TestOSDiskIsASparseCopy: a member's first OS disk is its image byte
// for byte, mode 0600, with every chunk of zeros a hole (the written
// zeros of the image included), and its source records the image's
// SHA-256; no temporary file is left.
func TestOSDiskIsASparseCopy(t *testing.T) {
	dir := t.TempDir()
	image := filepath.Join(dir, "etcd-1.img")
	want := writeImage(t, image, 0x5a)
	disks := filepath.Join(dir, "disks")
	os.Mkdir(disks, 0o700)
	m := &MemberState{Name: "etcd-1", Image: image}
	line, aside, err := prepareOSDisk(disks, m, time.Now(), false)
	if err != nil {
		t.Fatal(err)
	}
	if m.OSDisk != filepath.Join(disks, "etcd-1-os.img") || aside != "" {
		t.Errorf("OS disk %q, set aside %q", m.OSDisk, aside)
	}
	if !strings.Contains(line, "etcd-1: OS disk "+m.OSDisk+" is a fresh copy of "+image) {
		t.Errorf("said %q", line)
	}
	got, err := os.ReadFile(m.OSDisk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the OS disk differs from its image")
	}
	if fi, _ := os.Stat(m.OSDisk); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	if rec, _ := os.ReadFile(sourceFile(m.OSDisk)); string(rec) != digestOf(want)+"\n" {
		t.Errorf("source %q, want the image's SHA-256 %s", rec, digestOf(want))
	}
	if left, _ := filepath.Glob(filepath.Join(disks, ".*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	// Three chunks hold data (the first sector, the lone byte, the MiB of
	// data); the image also allocated its written zeros.
	copied, source := blocks(t, m.OSDisk), blocks(t, image)
	if source >= int64(len(want)/512) {
		t.Skipf("this file system allocated the image's holes (%d blocks)", source)
	}
	if limit := int64(3 * copyChunk / 512); copied > limit {
		t.Errorf("the copy has %d blocks allocated (the image %d), want at most %d", copied, source, limit)
	}
}

// TestOSDiskKeptWhileTheImageIsUnchanged: booted again from the same
// image (`up` after `down`, or a replace that built the same bytes), a
// member keeps its OS disk with what it wrote there, and nothing is set
// aside.
func TestOSDiskKeptWhileTheImageIsUnchanged(t *testing.T) {
	disks := t.TempDir()
	image := filepath.Join(t.TempDir(), "etcd-1.img")
	writeImage(t, image, 1)
	m := &MemberState{Name: "etcd-1", Image: image}
	if _, _, err := prepareOSDisk(disks, m, time.Now(), false); err != nil {
		t.Fatal(err)
	}
	slot := []byte("slot b, written by the member")
	f, _ := os.OpenFile(m.OSDisk, os.O_WRONLY, 0)
	f.WriteAt(slot, 6<<20)
	f.Close()
	line, aside, err := prepareOSDisk(disks, m, time.Now(), false)
	if err != nil {
		t.Fatal(err)
	}
	if aside != "" || !strings.Contains(line, "etcd-1: OS disk "+m.OSDisk+" kept: "+image+" is unchanged") {
		t.Errorf("said %q, set aside %q", line, aside)
	}
	got, _ := os.ReadFile(m.OSDisk)
	if !bytes.Contains(got, slot) {
		t.Error("what the member wrote on its OS disk is gone")
	}
	if _, err := os.Stat(filepath.Join(disks, previousDir)); !os.IsNotExist(err) {
		t.Errorf("something was set aside: %v", err)
	}
}

// TestOSDiskSetAsideWhenTheImageChanged: a new image (or an OS disk
// whose source is not recorded) moves the old disk and its record to
// previous/, stamped in UTC, never deleting them, and the member gets a
// fresh copy of the new image; an old disk is never overwritten there.
func TestOSDiskSetAsideWhenTheImageChanged(t *testing.T) {
	disks := t.TempDir()
	image := filepath.Join(t.TempDir(), "etcd-1.img")
	first := writeImage(t, image, 1)
	m := &MemberState{Name: "etcd-1", Image: image}
	if _, _, err := prepareOSDisk(disks, m, time.Now(), false); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(m.OSDisk, os.O_WRONLY, 0)
	f.WriteAt([]byte("slot b"), 6<<20)
	f.Close()
	written, _ := os.ReadFile(m.OSDisk)

	second := writeImage(t, image, 2)
	now := time.Date(2026, 3, 4, 5, 6, 7, 890e6, time.FixedZone("CET", 3600))
	line, aside, err := prepareOSDisk(disks, m, now, false)
	if err != nil {
		t.Fatal(err)
	}
	wantAside := filepath.Join(disks, "previous", "etcd-1-os-20260304T040607.890.img")
	if aside != wantAside || !strings.HasSuffix(line, "; the old one kept at "+wantAside) {
		t.Errorf("set aside at %q, said %q; want %s", aside, line, wantAside)
	}
	if got, _ := os.ReadFile(aside); !bytes.Equal(got, written) {
		t.Error("the disk set aside is not the member's old OS disk")
	}
	if rec, _ := os.ReadFile(sourceFile(aside)); string(rec) != digestOf(first)+"\n" {
		t.Errorf("the old disk's source %q, want the first image's", rec)
	}
	if got, _ := os.ReadFile(m.OSDisk); !bytes.Equal(got, second) {
		t.Error("the new OS disk is not the new image")
	}
	if rec, _ := os.ReadFile(sourceFile(m.OSDisk)); string(rec) != digestOf(second)+"\n" {
		t.Errorf("source %q, want the new image's", rec)
	}

	// No record of the source: set aside too, and a second one in the
	// same millisecond is refused rather than overwrite the first.
	os.Remove(sourceFile(m.OSDisk))
	if _, _, err := prepareOSDisk(disks, m, now, false); err == nil || !strings.Contains(err.Error(), "exists; move it away first") {
		t.Errorf("an old disk was set aside over another: %v", err)
	}
	if _, aside, err := prepareOSDisk(disks, m, now.Add(time.Second), false); err != nil || aside == "" {
		t.Errorf("an OS disk without its source: set aside %q, %v", aside, err)
	}
	if old, _ := filepath.Glob(filepath.Join(disks, "previous", "etcd-1-os-*.img")); len(old) != 2 {
		t.Errorf("previous/ holds %v, want both old disks", old)
	}
}

// TestSwapRenewsTheOSDisk: replace and roll (Driver.Swap) give a member
// whose image changed a fresh OS disk before it boots, and say where the
// old one went. (The LAN is down here, so nothing boots.)
func TestSwapRenewsTheOSDisk(t *testing.T) {
	run, disks := t.TempDir(), t.TempDir()
	image := filepath.Join(t.TempDir(), "etcd-1.img")
	writeImage(t, image, 1)
	st := &State{RunDir: run, DiskDir: disks, Members: []MemberState{{Name: "etcd-1", Image: image}}}
	if _, err := st.PrepareOSDisk("etcd-1"); err != nil {
		t.Fatal(err)
	}
	newImage := filepath.Join(t.TempDir(), "etcd-1.img")
	want := writeImage(t, newImage, 2)
	var said []string
	d := &Driver{State: st}
	err := d.Swap(context.Background(), "etcd-1", newImage, true, func(line string, _ time.Duration) { said = append(said, line) })
	if err == nil || !strings.Contains(err.Error(), "virtual LAN") {
		t.Fatalf("swap: %v", err)
	}
	if len(said) != 2 || !strings.Contains(said[1], "is a fresh copy of "+newImage) || !strings.Contains(said[1], "the old one kept at "+filepath.Join(disks, "previous")) {
		t.Errorf("said %q", said)
	}
	loaded, err := LoadState(run)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := loaded.Member("etcd-1")
	if got, _ := os.ReadFile(m.OSDisk); m.Image != newImage || m.OSDisk != OSDiskPath(disks, "etcd-1") || !bytes.Equal(got, want) {
		t.Errorf("recorded image %q, OS disk %q (the new image: %v)", m.Image, m.OSDisk, bytes.Equal(got, want))
	}
}

// TestOldStateFilesLoad: a state file written before members had OS
// disks and node API ports of their own loads, with neither recorded.
func TestOldStateFilesLoad(t *testing.T) {
	run := t.TempDir()
	old := `{"runDir": "` + run + `", "diskDir": "/d", "members": [{"name": "etcd-1", "ip": "192.168.2.11",
		"qemu": {"pid": 0, "args": null}, "clientPort": 40179, "backupPort": 40183, "console": "c", "qmp": "q",
		"image": "/o/images/etcd-1.img", "dataDisk": "/d/etcd-1-data.img"}]}`
	os.WriteFile(filepath.Join(run, StateFile), []byte(old), 0o600)
	st, err := LoadState(run)
	if err != nil {
		t.Fatal(err)
	}
	if m := st.Members[0]; m.Image != "/o/images/etcd-1.img" || m.OSDisk != "" || m.NodeAPI != 0 || m.Backup != 40183 {
		t.Errorf("loaded %+v", m)
	}
}

// TestUpgradeRefusesALANWithoutNodeAPIForwards: a cluster that an
// etcdimg without boot slots started has no node API forwards (measured:
// roll --keep-disks boots slotted images on it, and upgrade then dialled
// 127.0.0.1:0); upgrade says to run down and up once, before anything.
func TestUpgradeRefusesALANWithoutNodeAPIForwards(t *testing.T) {
	out := t.TempDir()
	run := outdir.Layout(out).RunDir()
	os.MkdirAll(run, 0o700)
	old := `{"runDir": "` + run + `", "diskDir": "/d", "members": [{"name": "etcd-1", "ip": "192.168.2.11",
		"qemu": {"pid": 0, "args": null}, "clientPort": 40179, "backupPort": 40183, "console": "c", "qmp": "q",
		"image": "/o/images/etcd-1.img", "dataDisk": "/d/etcd-1-data.img"}]}`
	os.WriteFile(filepath.Join(run, StateFile), []byte(old), 0o600)
	_, _, err := Upgrade(context.Background(), LifecycleOptions{Dir: outdir.Layout(out)}, nil)
	if err == nil || !strings.Contains(err.Error(), "forwards no node API port for etcd-1: run `etcdimg down` and `etcdimg up` once") {
		t.Fatalf("upgrade of a pre-slot LAN: %v", err)
	}
	if err := forwardsNodeAPI(outdir.Layout(t.TempDir())); err != nil {
		t.Errorf("no cluster under up: %v", err)
	}
}

// TestAReplaceReImagesEvenFromTheSameImage: replace and roll re-image the
// machine: an OS disk copied from the very same image is set aside for a
// fresh copy, as it may hold a slot the member installed since (upgrade),
// which it would boot instead of the image. `up` keeps it.
func TestAReplaceReImagesEvenFromTheSameImage(t *testing.T) {
	disks := t.TempDir()
	image := filepath.Join(t.TempDir(), "etcd-1.img")
	writeImage(t, image, 1)
	m := &MemberState{Name: "etcd-1", Image: image}
	if _, _, err := prepareOSDisk(disks, m, time.Now(), false); err != nil {
		t.Fatal(err)
	}
	// The member wrote a slot into its disk since.
	f, err := os.OpenFile(m.OSDisk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("a slot installed by upgrade"), 4096)
	f.Close()
	if _, aside, err := prepareOSDisk(disks, m, time.Now(), false); err != nil || aside != "" {
		t.Fatalf("up from the same image: aside %q, %v; want the disk kept", aside, err)
	}
	_, aside, err := prepareOSDisk(disks, m, time.Now().Add(time.Second), true)
	if err != nil || aside == "" {
		t.Fatalf("replace: aside %q, %v; want a fresh copy", aside, err)
	}
	got, _ := os.ReadFile(m.OSDisk)
	want, _ := os.ReadFile(image)
	if !bytes.Equal(got, want) {
		t.Error("the fresh OS disk is not a copy of the image")
	}
	if kept, _ := os.ReadFile(aside); !bytes.Contains(kept, []byte("a slot installed by upgrade")) {
		t.Error("the old OS disk was not kept aside whole")
	}
}
