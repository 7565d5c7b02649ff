package e2e

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"

	"etcdimg/image"
	"etcdimg/image/deb"
	"etcdimg/internal/slot"
	"etcdimg/testvm"
)

// The boot floor is what a member's boot cannot beat on this machine: the
// same kernel, on the same QEMU machine, reaching its first userspace
// instruction in a trivial initramfs whose /init at once writes to QEMU's
// isa-debug-exit port, which ends QEMU with status 85. QEMU's wall time
// is the floor: (a) with QEMU loading the kernel directly, (b) under OVMF
// from a disk whose ESP holds the kernel and the trivial initramfs as the
// same kind of unified kernel image a member boots.

// debugExitPort is the I/O port of QEMU's isa-debug-exit device.
const debugExitPort = 0xf4

// trivialInit is a static x86-64 ELF executable of one page: ioperm
// for the debug-exit port, then `out` 0x2a to it (QEMU exits with
// 0x2a<<1|1 = 85), then spin.
func trivialInit() []byte {
	code := []byte{
		0xb8, 173, 0, 0, 0, // mov eax, SYS_ioperm
		0xbf, debugExitPort, 0, 0, 0, // mov edi, port
		0xbe, 1, 0, 0, 0, // mov esi, 1 (one port)
		0xba, 1, 0, 0, 0, // mov edx, 1 (allow)
		0x0f, 0x05, // syscall
		0xb0, 0x2a, // mov al, 0x2a
		0xe6, debugExitPort, // out port, al
		0xeb, 0xfe, // jmp $
	}
	const base, ehsize, phsize = 0x400000, 64, 56
	var b bytes.Buffer
	le := binary.LittleEndian
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	binary.Write(&b, le, struct {
		Type, Machine                                        uint16
		Version                                              uint32
		Entry, Phoff, Shoff                                  uint64
		Flags                                                uint32
		Ehsize, Phentsize, Phnum, Shentsize, Shnum, Shstrndx uint16
	}{2, 0x3e, 1, base + ehsize + phsize, ehsize, 0, 0, ehsize, phsize, 1, 0, 0, 0})
	size := uint64(ehsize + phsize + len(code))
	binary.Write(&b, le, struct {
		Type, Flags                                uint32
		Offset, Vaddr, Paddr, Filesz, Memsz, Align uint64
	}{1, 5, 0, base, base, size, size, 0x1000})
	b.Write(code)
	return b.Bytes()
}

// trivialInitramfs is a newc archive holding /init and /dev/console.
func trivialInitramfs(b testing.TB) []byte {
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	for _, r := range []cpio.Record{
		cpio.Directory("dev", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.StaticFile("init", string(trivialInit()), 0o755),
	} {
		if err := w.WriteRecord(cpio.MakeReproducible(r)); err != nil {
			b.Fatal(err)
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

// floorBoot is what the floors boot: the kernel a member boots, the
// trivial initramfs, and the member's command line.
type floorBoot struct {
	kernel, initrd string // files, for QEMU's -kernel and -initrd
	disk           string // a raw disk whose ESP holds the UKI
	// ukiDisk is the same disk with the slot's UKI as the removable-media
	// loader (EFI/BOOT/BOOTX64.EFI) instead of systemd-boot: what
	// systemd-boot costs is floor (b) on disk less floor (b) on ukiDisk.
	ukiDisk  string
	cmdline  string // for QEMU's -append; "" is the member's
	memoryMB int    // guest RAM; 0 is guestMemoryMB
}

// prepareFloor writes the floor's files into dir from the packages `make
// deps` downloaded.
func prepareFloor(b testing.TB, dir string) floorBoot {
	cache := os.Getenv(deb.CacheEnv)
	kdeb, err := deb.FindVerified(cache, deb.Kernel)
	if err != nil {
		b.Fatal(err)
	}
	sdeb, err := deb.FindVerified(cache, deb.Bootloader)
	if err != nil {
		b.Fatal(err)
	}
	k, err := image.ReadKernel(kdeb)
	if err != nil {
		b.Fatal(err)
	}
	stub, err := image.ReadStub(sdeb)
	if err != nil {
		b.Fatal(err)
	}
	fb := floorBoot{kernel: filepath.Join(dir, "vmlinuz"), initrd: filepath.Join(dir, "trivial.cpio")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	if err := errors.Join(os.WriteFile(fb.kernel, k.Vmlinuz, 0o644), os.WriteFile(fb.initrd, trivialInitramfs(b), 0o644)); err != nil {
		b.Fatal(err)
	}
	loader, err := image.ReadLoader(sdeb)
	if err != nil {
		b.Fatal(err)
	}
	// The disk is a member's: systemd-boot, then the slot's UKI; the
	// node binary is never run (the trivial /init exits first).
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		b.Fatal(err)
	}
	boot := &image.Boot{Stub: stub, Loader: loader, Kernel: k.Vmlinuz, KernelVersion: k.Version, Initrd: trivialInitramfs(b),
		Node: []byte("not run"), Signer: key, SignerPub: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})}
	raw, _ := image.FormatNamed("raw")
	built, err := image.WriteAll(dir, []image.Member{{Cluster: "floor", Name: "floor"}}, boot, []image.Format{raw}, image.FormatOptions{})
	if err != nil {
		b.Fatal(err)
	}
	fb.disk = built[0].Path
	// The slot's ID does not depend on the loader: the UKI written as
	// the loader is byte for byte the slot's.
	bundle, _, err := image.ReadSlot(fb.disk)
	if err != nil {
		b.Fatal(err)
	}
	direct := *boot
	direct.Loader = bundle.Files[slot.FileUKI]
	built, err = image.WriteAll(filepath.Join(dir, "uki"), []image.Member{{Cluster: "floor", Name: "floor"}}, &direct, []image.Format{raw}, image.FormatOptions{})
	if err != nil {
		b.Fatal(err)
	}
	fb.ukiDisk = built[0].Path
	return fb
}

// withoutLoader is fb booting its UKI as the removable-media loader.
func (fb floorBoot) withoutLoader() floorBoot {
	fb.disk = fb.ukiDisk
	return fb
}

// floorRun boots once and returns QEMU's wall time to the debug exit.
// efi boots the disk under OVMF, set up as a member's; otherwise QEMU
// loads the kernel.
func floorRun(b testing.TB, fb floorBoot, efi bool) time.Duration {
	d, err := tryFloorRun(b, fb, efi, 2*time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// tryFloorRun is floorRun that returns a boot that does not reach /init
// within timeout as an error, with the console's tail.
func tryFloorRun(b testing.TB, fb floorBoot, efi bool, timeout time.Duration) (time.Duration, error) {
	mem := fb.memoryMB
	if mem == 0 {
		mem = guestMemoryMB
	}
	args := testvm.MachineArgs("tcg", mem, 1)
	args = append(args, "-device", fmt.Sprintf("isa-debug-exit,iobase=%#x,iosize=0x04", debugExitPort))
	console := filepath.Join(filepath.Dir(fb.disk), "floor-console.log")
	args = append(args, "-serial", "file:"+console)
	if efi {
		args = append(args, testvm.FirmwareArgs()...)
		args = append(args, "-drive", "if=virtio,format=raw,readonly=on,file="+fb.disk)
	} else {
		cmdline := fb.cmdline
		if cmdline == "" {
			cmdline = image.KernelCmdline
		}
		args = append(args, "-kernel", fb.kernel, "-initrd", fb.initrd, "-append", cmdline)
	}
	cmd := exec.Command("qemu-system-x86_64", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		return 0, fmt.Errorf("floor boot (%d MiB) did not reach /init within %s:\n%s", mem, timeout, consoleTail(console))
	}
	took := time.Since(start)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 85 {
		return 0, fmt.Errorf("floor boot: QEMU ended with %v, not the debug exit (85): %s\n%s", err, stderr.Bytes(), consoleTail(console))
	}
	return took, nil
}

// consoleTail is the end of a console log, for a failure's message.
func consoleTail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// floorSmallestRAM is the smallest guest RAM, in 32 MiB steps from 128
// MiB, with which floor (b) reaches its /init: what OVMF and the
// kernel's EFI stub need, whatever the initramfs. 0 if none up to
// guestMemoryMB does.
func floorSmallestRAM(b testing.TB, fb floorBoot) int {
	for mem := 128; mem <= guestMemoryMB; mem += 32 {
		fb.memoryMB = mem
		if _, err := tryFloorRun(b, fb, true, 45*time.Second); err == nil {
			return mem
		}
	}
	return 0
}

// floorFigures are floor (a), floor (b) and floor (b) without
// systemd-boot, measured n times each, interleaved so that a busy moment
// of the host weighs on each alike. Floor (b) runs OVMF as members do
// (testvm.FirmwareArgs).
type floorFigures struct {
	direct, efi []time.Duration
	// uki is floor (b) with the UKI as the loader: no systemd-boot.
	uki         []time.Duration
	smallestRAM int // floorSmallestRAM
}

func measureFloors(b testing.TB, dir string, n int) floorFigures {
	fb := prepareFloor(b, dir)
	var f floorFigures
	for range n {
		f.direct = append(f.direct, floorRun(b, fb, false))
		f.efi = append(f.efi, floorRun(b, fb, true))
		f.uki = append(f.uki, floorRun(b, fb.withoutLoader(), true))
	}
	f.smallestRAM = floorSmallestRAM(b, fb)
	return f
}

// best and median of a sample.
func best(d []time.Duration) time.Duration { return slices.Min(d) }

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestTrivialInitEndsQEMUAtOnce: the floor's /init, booted by QEMU with
// the member's kernel, ends QEMU with the debug-exit status, and its
// UKI boots under OVMF to the same end, through systemd-boot and as the
// loader itself. Without this the floors the
// benchmark prints could be timeouts.
func TestTrivialInitEndsQEMUAtOnce(t *testing.T) {
	dir := t.TempDir()
	fb := prepareFloor(t, dir)
	for _, efi := range []bool{false, true} {
		d := floorRun(t, fb, efi)
		t.Logf("efi=%v: QEMU start → /init: %s", efi, d.Round(10*time.Millisecond))
	}
	d := floorRun(t, fb.withoutLoader(), true)
	t.Logf("the UKI as the loader, no systemd-boot: QEMU start → /init: %s", d.Round(10*time.Millisecond))
}

// initramfsOf is the compressed initramfs in img's unified kernel image.
func initramfsOf(b testing.TB, img string) []byte {
	bundle, _, err := image.ReadSlot(img)
	if err != nil {
		b.Fatal(err)
	}
	initrd, err := image.UKISectionData(bundle.Files[slot.FileUKI], ".initrd")
	if err != nil {
		b.Fatal(err)
	}
	return initrd
}

func unpackedSize(b testing.TB, initrd []byte) int64 {
	zr, _ := zstd.NewReader(nil)
	defer zr.Close()
	raw, err := zr.DecodeAll(initrd, nil)
	if err != nil {
		b.Fatal(err)
	}
	return int64(len(raw))
}

// initramfsCost is what the member's initramfs adds to floor (a): the
// kernel loads and unpacks it, then the trivial archive after it, whose
// /init replaces the node binary's. Best of n, each against a floor (a)
// run next to it.
func initramfsCost(b testing.TB, dir string, initrd []byte, n int) time.Duration {
	fb := prepareFloor(b, filepath.Join(dir, "cost"))
	with := fb
	with.initrd = filepath.Join(dir, "cost", "member-then-trivial.cpio")
	// The kernel takes concatenated archives; zero bytes pad the
	// compressed one to the 4-byte boundary the next header needs.
	both := slices.Clone(initrd)
	both = append(both, make([]byte, (4-len(both)%4)%4)...)
	if err := os.WriteFile(with.initrd, append(both, trivialInitramfs(b)...), 0o644); err != nil {
		b.Fatal(err)
	}
	var withs, withouts []time.Duration
	for range n {
		withouts = append(withouts, floorRun(b, fb, false))
		withs = append(withs, floorRun(b, with, false))
	}
	return best(withs) - best(withouts)
}
