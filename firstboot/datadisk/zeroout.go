package datadisk

import (
	"bytes"
	"fmt"
	"io"
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

// directReader reads a block device around the page cache (O_DIRECT):
// the disk rule reads 32 MiB of a blank disk to prove it blank, and
// through the page cache every byte of it is copied once more and kept
// in the guest's memory for nothing. Reads are widened to whole aligned
// 4 KiB blocks in a bounce buffer.
type directReader struct{ f *os.File }

const directAlign = 4096

// openDirect opens path for direct reads, or plainly where the file
// system refuses O_DIRECT (tmpfs, in tests).
func openDirect(path string) (io.ReaderAt, io.Closer, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err == nil {
		return directReader{f}, f, nil
	}
	f, err = os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	return f, f, nil
}

func (d directReader) ReadAt(p []byte, off int64) (int, error) {
	if off%directAlign == 0 && len(p)%directAlign == 0 && uintptr(unsafe.Pointer(unsafe.SliceData(p)))%directAlign == 0 {
		return d.f.ReadAt(p, off)
	}
	start := off / directAlign * directAlign
	end := (off + int64(len(p)) + directAlign - 1) / directAlign * directAlign
	buf := alignedBuffer(int(end - start))
	n, err := d.f.ReadAt(buf, start)
	got := max(0, min(n-int(off-start), len(p)))
	copy(p, buf[off-start:off-start+int64(got)])
	if got < len(p) && err == nil {
		err = io.EOF
	}
	if got == len(p) {
		err = nil
	}
	return got, err
}

// alignedBuffer is n bytes whose start is directAlign-aligned.
func alignedBuffer(n int) []byte {
	b := make([]byte, n+directAlign)
	skip := (directAlign - int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))%directAlign)) % directAlign
	return b[skip : skip+n]
}

// windowReader serves reads that fall inside the disk's first and last
// windows from memory, read once in large requests: the disk rule's
// hundred-odd small reads (every signature at every usual partition
// start) each cost a round trip through the emulated disk.
type windowReader struct {
	r          io.ReaderAt
	head, tail []byte
	tailOff    int64
}

// newWindowReader reads the first headLen and the last tailLen bytes of
// a size-byte device. A window it cannot read whole is an error: the
// bytes it did not get must never be served as zeros.
func newWindowReader(r io.ReaderAt, size, headLen, tailLen int64) (*windowReader, error) {
	w := &windowReader{r: r}
	headLen, tailLen = min(headLen, size), min(tailLen, size)
	w.head = alignedBuffer(int(headLen))
	if err := readWhole(r, w.head, 0); err != nil {
		return nil, err
	}
	w.tailOff = size - tailLen
	w.tail = alignedBuffer(int(tailLen))
	if err := readWhole(r, w.tail, w.tailOff); err != nil {
		return nil, err
	}
	return w, nil
}

// readWhole fills p from off, or says why not.
func readWhole(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("reading %d bytes at byte %d: %w", len(p), off, err)
}

func (w *windowReader) ReadAt(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	switch {
	case off >= 0 && end <= int64(len(w.head)):
		return copy(p, w.head[off:end]), nil
	case off >= w.tailOff && end <= w.tailOff+int64(len(w.tail)):
		return copy(p, w.tail[off-w.tailOff:end-w.tailOff]), nil
	}
	return w.r.ReadAt(p, off)
}
