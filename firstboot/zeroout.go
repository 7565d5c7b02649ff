package firstboot

import (
	"bytes"
	"fmt"
	"os"
	"unsafe"

	"github.com/diskfs/go-diskfs/backend"
	"golang.org/x/sys/unix"
)

// A fresh ext4 is mostly zeros: the journal (32 MiB on 1 GiB) and the
// inode tables. Written as data, every zero crosses the emulated disk
// (under TCG that was 1.4 s of a member's first boot) and fills a thin
// cloud disk. zeroingStorage hands each large all-zero write to the
// device as a zero-out instead: BLKZEROOUT on a block device (virtio-blk
// sends WRITE_ZEROES, no payload; the kernel writes zero pages itself
// where the device has no such command), FALLOC_FL_ZERO_RANGE on a file.
// The bytes are zeros afterwards either way; nothing is skipped, so the
// result does not depend on what the disk held.
type zeroingStorage struct {
	backend.Storage
	zeroed *int64 // bytes written as zero-outs
}

// zeroOutMin is the smallest all-zero write turned into a zero-out.
const zeroOutMin = 64 << 10

func (z zeroingStorage) Writable() (backend.WritableFile, error) {
	w, err := z.Storage.Writable()
	if err != nil {
		return nil, err
	}
	f, err := z.Storage.Sys()
	if err != nil || f == nil {
		return w, nil
	}
	return zeroingFile{WritableFile: w, f: f, zeroed: z.zeroed}, nil
}

type zeroingFile struct {
	backend.WritableFile
	f      *os.File
	zeroed *int64
}

func (z zeroingFile) WriteAt(p []byte, off int64) (int, error) {
	if len(p) >= zeroOutMin && off%512 == 0 && len(p)%512 == 0 && allZero(p) {
		if zeroOut(z.f, off, int64(len(p))) == nil {
			*z.zeroed += int64(len(p))
			return len(p), nil
		}
	}
	return z.WritableFile.WriteAt(p, off)
}

var zeroChunk [zeroOutMin]byte

func allZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroChunk))
		if !bytes.Equal(p[:n], zeroChunk[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// blkZeroOut is BLKZEROOUT, _IO(0x12, 127) in linux/fs.h.
const blkZeroOut = 0x127f

// zeroOut makes length bytes at off read as zeros, by the device.
func zeroOut(f *os.File, off, length int64) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Mode()&os.ModeDevice != 0 {
		r := [2]uint64{uint64(off), uint64(length)}
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), blkZeroOut, uintptr(unsafe.Pointer(&r))); e != 0 {
			return fmt.Errorf("BLKZEROOUT: %w", e)
		}
		return nil
	}
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}
