package datadisk

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ext4ResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64): the kernel
// grows a mounted ext4 file system to the given number of blocks (online
// resize; the image carries no resize2fs).
const ext4ResizeFS = 0x40086610

// growMin is how much larger than its file system a data disk must be
// for Grow to grow it: less is not worth a resize.
const growMin = 8 << 20

// Superblock fields Grow reads (offsets within the superblock, which
// starts 1024 bytes into the device).
const (
	sbOffset          = 1024
	sbBlocksCountLo   = 0x4
	sbLogBlockSize    = 0x18
	sbMagic           = 0x38
	sbFeatureIncompat = 0x60
	sbBlocksCountHi   = 0x150
	ext4Magic         = 0xEF53
	incompat64Bit     = 0x80
)

// fsGeometry reads the block size and block count of the ext4 file
// system on dev from its superblock.
func fsGeometry(dev string) (blockSize, blocks int64, err error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	return geometryAt(f, dev)
}

// geometryAt reads the block size and block count of the ext4 file
// system r holds (dev names it in errors).
func geometryAt(r io.ReaderAt, dev string) (blockSize, blocks int64, err error) {
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, sbOffset); err != nil {
		return 0, 0, fmt.Errorf("read the superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[sbMagic:]) != ext4Magic {
		return 0, 0, fmt.Errorf("no ext4 superblock on %s", dev)
	}
	blockSize = 1024 << le.Uint32(sb[sbLogBlockSize:])
	blocks = int64(le.Uint32(sb[sbBlocksCountLo:]))
	if le.Uint32(sb[sbFeatureIncompat:])&incompat64Bit != 0 {
		blocks |= int64(le.Uint32(sb[sbBlocksCountHi:])) << 32
	}
	return blockSize, blocks, nil
}

// checkGeometry refuses a data disk r (size bytes) that is ours by its
// label but does not fit what its file system says, before anything
// mounts it: a disk smaller than its file system (a wrong or truncated
// volume; the kernel would refuse it with "bad geometry"), or one
// enlarged after a first format that did not finish (the record of that
// format still lies just past the file system's end, where the disk's
// end was).
func checkGeometry(r io.ReaderAt, size int64) error {
	bs, blocks, err := geometryAt(r, "the data disk")
	if err != nil {
		return err
	}
	end := blocks * bs
	if size < end {
		return fmt.Errorf("the disk is %d MiB, smaller than its %d MiB file system: attach the disk it was, or a larger one; nothing on it was changed", size>>20, end>>20)
	}
	if size-end < intentSpace+sampleSize {
		return nil // the disk's end is where the format left it
	}
	b := make([]byte, 2*sampleSize)
	if n, _ := r.ReadAt(b, end); n < len(b) {
		return fmt.Errorf("reading %d bytes at byte %d, the file system's end: short read", len(b), end)
	}
	// The record sat at the old end less intentSpace, which the file
	// system's end rounded down to 4 KiB, on a sector boundary.
	for off := 0; off < sampleSize; off += 512 {
		if in, ok := decodeIntent(b[off : off+sampleSize]); ok {
			return fmt.Errorf("it carries a first-format record of %s/%s for a %d-byte disk at its file system's end, but is %d bytes: the first format did not finish before the disk was enlarged; not using it (attach a blank disk)", in.Cluster, in.Member, in.Size, size)
		}
	}
	return nil
}

// Grow grows the ext4 file system on dev, mounted read-write on dir, to
// fill the device (less the last MiB, where the first format keeps its
// record) when the device was enlarged while the member was off: online,
// by the kernel. It says what it did, or "" when the device is not
// growMin larger than the file system. A device smaller than its file
// system is an error (the kernel refuses to mount one such anyway).
func Grow(dev, dir string) (string, error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", fmt.Errorf("grow: %w", err)
	}
	size, err := deviceSize(f)
	f.Close()
	if err != nil {
		return "", fmt.Errorf("grow: the size of %s: %w", dev, err)
	}
	bs, blocks, err := fsGeometry(dev)
	if err != nil {
		return "", fmt.Errorf("grow: %w", err)
	}
	want := (size - intentSpace) / bs
	switch {
	case size < blocks*bs:
		return "", fmt.Errorf("grow: %s is %d MiB, smaller than its %d MiB file system: attach the disk it was, or a larger one", dev, size>>20, blocks*bs>>20)
	case (want-blocks)*bs < growMin:
		return "", nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return "", fmt.Errorf("grow: %w", err)
	}
	defer d.Close()
	n := uint64(want)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, d.Fd(), ext4ResizeFS, uintptr(unsafe.Pointer(&n))); errno != 0 {
		return "", fmt.Errorf("grow: resize the file system on %s from %d to %d MiB: %w", dev, blocks*bs>>20, want*bs>>20, errno)
	}
	return fmt.Sprintf("the data disk %s grew to %d MiB: its file system was resized online from %d to %d MiB", dev, size>>20, blocks*bs>>20, want*bs>>20), nil
}
