package datadisk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
	"golang.org/x/sys/unix"

	"etcdimg/internal/layout"
)

// The disk rule: a data disk is formatted only when it is provably blank,
// or when it is provably a first format of ours that did not finish.
//
// Blank means no known signature (partition tables, primary and backup;
// ext2/3/4, XFS, btrfs, LUKS, LVM, swap, FAT, NTFS, ISO 9660, squashfs)
// at the disk's start or at any usual partition start, and zeros over the
// first and last 16 MiB and the first 4 KiB of every 16 MiB between:
// where file systems and volume managers keep their headers and copies
// (ext4's block groups are 128 MiB, btrfs mirrors at 64 MiB and 256 GiB,
// XFS allocation groups are larger still).
//
// A first format writes an intent record into the disk's last MiB
// (outside the file system) before it writes anything else, and clears it
// only once the new file system is mounted and marked; etcd starts after
// that. So a disk that carries the record was blank when its format began
// and never held data: it is formatted again. Nothing else is.

// Disk contents, as firstboot classifies them.
const (
	contentBlank       = "blank"
	contentOurs        = "ext4 " + layout.DataLabel
	contentInterrupted = "an interrupted first format"
)

const (
	mib          = 1 << 20
	zeroWindow   = 16 * mib // read whole at each end of the disk
	sampleStride = 16 * mib // and 4 KiB at every 16 MiB between
	sampleSize   = 4096
	// intentSpace is left outside the file system at the end of the disk
	// for the intent record.
	intentSpace = mib
)

// partitionStarts are where partitions usually begin: the disk itself,
// the old DOS and unaligned GPT starts, and the aligned ones.
var partitionStarts = []int64{0, 34 * 512, 63 * 512, 128 * 512, mib, 2 * mib, 4 * mib, 8 * mib, 16 * mib}

// signatures are magic bytes at offsets from a file system's or volume's
// start.
var signatures = []struct {
	off  int64
	sig  string
	name string
}{
	{1080, "\x53\xef", "ext2/3/4"},
	{0, "XFSB", "XFS"},
	{65600, "_BHRfS_M", "btrfs"},
	{0, "LUKS\xba\xbe", "LUKS"},
	{16384, "SKUL\xba\xbe", "LUKS2"},
	{512, "LABELONE", "LVM"},
	{4086, "SWAPSPACE2", "swap"},
	{4086, "SWAP-SPACE", "swap"},
	{82, "FAT32   ", "FAT"},
	{54, "FAT1", "FAT"},
	{3, "NTFS    ", "NTFS"},
	{32769, "CD001", "ISO 9660"},
	{0, "hsqs", "squashfs"},
}

// intentMagic starts the intent record of a first format.
const intentMagic = "ETCDIMG FIRST FORMAT IN PROGRESS\n"

// intent is what the record says: whose format it is.
type intent struct {
	Cluster string `json:"cluster"`
	Member  string `json:"member"`
	Size    int64  `json:"size"`
}

// encodeIntent is the record: magic, JSON, and the SHA-256 of both, in
// one 4 KiB block, so that no stray bytes are ever taken for it.
func encodeIntent(in intent) []byte {
	j, _ := json.Marshal(in)
	b := make([]byte, sampleSize)
	n := copy(b, intentMagic)
	binary.LittleEndian.PutUint32(b[n:], uint32(len(j)))
	n += 4
	n += copy(b[n:], j)
	sum := sha256.Sum256(b[:n])
	copy(b[n:], sum[:])
	return b
}

// interruptedFormat reports whether the disk f carries the record of a
// first format that did not finish.
func interruptedFormat(f *os.File) bool {
	size, err := deviceSize(f)
	if err != nil || size <= intentSpace {
		return false
	}
	b := make([]byte, sampleSize)
	if n, _ := f.ReadAt(b, size-intentSpace); n != len(b) {
		return false
	}
	_, ok := decodeIntent(b)
	return ok
}

func decodeIntent(b []byte) (intent, bool) {
	var in intent
	if len(b) < len(intentMagic)+4 || string(b[:len(intentMagic)]) != intentMagic {
		return in, false
	}
	n := len(intentMagic)
	l := int(binary.LittleEndian.Uint32(b[n:]))
	n += 4
	if l <= 0 || n+l+sha256.Size > len(b) {
		return in, false
	}
	sum := sha256.Sum256(b[:n+l])
	if !bytes.Equal(sum[:], b[n+l:n+l+sha256.Size]) || json.Unmarshal(b[n:n+l], &in) != nil {
		return in, false
	}
	return in, true
}

// inspect classifies what r (size bytes) holds: blank, our data file
// system, an interrupted first format of ours, or (an error naming it)
// anything else, which firstboot never touches.
//
// Only what was read counts: a read that fails (a bad sector answers
// EIO) or comes back short (the device is smaller than it said) proves
// nothing about the bytes it did not return, and the disk is refused,
// whatever the rest of it holds.
func inspect(r io.ReaderAt, size int64) (string, error) {
	var readErr error // the first read that failed
	read := func(off, n int64) []byte {
		if readErr != nil || off < 0 || off >= size {
			return nil
		}
		b := make([]byte, min(n, size-off))
		got, err := r.ReadAt(b, off)
		if got < len(b) {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			readErr = fmt.Errorf("reading %d bytes at byte %d: %w", len(b), off, err)
			return nil
		}
		return b
	}
	// classified returns content only if every read behind it succeeded.
	classified := func(content string) (string, error) {
		if readErr != nil {
			return "", fmt.Errorf("%w: not provably blank, nor provably ours; not touching it", readErr)
		}
		return content, nil
	}
	if size > intentSpace {
		if in, ok := decodeIntent(read(size-intentSpace, sampleSize)); ok {
			if in.Size != size {
				return "", fmt.Errorf("it carries a first-format record of %s/%s for a %d-byte disk, but is %d bytes; not formatting a disk that changed size", in.Cluster, in.Member, in.Size, size)
			}
			return classified(contentInterrupted)
		}
	}
	if sb := read(1024, 1024); len(sb) == 1024 && binary.LittleEndian.Uint16(sb[56:58]) == 0xEF53 {
		label := string(bytes.TrimRight(sb[120:136], "\x00"))
		if label != layout.DataLabel {
			return "", fmt.Errorf("it holds an ext2/3/4 file system labelled %q, not %q: not this appliance's; attach a blank disk, or relabel it (e2label) if it really holds this member's etcd data", label, layout.DataLabel)
		}
		return classified(contentOurs)
	}
	for _, base := range partitionStarts {
		for _, s := range signatures {
			if b := read(base+s.off, int64(len(s.sig))); string(b) == s.sig {
				where := "at its start"
				if base > 0 {
					where = fmt.Sprintf("in a partition at %d KiB", base/1024)
				}
				return "", fmt.Errorf("it holds %s %s; not formatting it", s.name, where)
			}
		}
	}
	for _, sector := range []int64{512, 4096} {
		if b := read(sector, 8); string(b) == "EFI PART" {
			return "", errors.New("it holds a GPT partition table; not formatting it")
		}
		if b := read(size-sector, 8); string(b) == "EFI PART" {
			return "", errors.New("it holds a backup GPT partition table at its end; not formatting it")
		}
	}
	if b := read(510, 2); string(b) == "\x55\xaa" {
		return "", errors.New("it holds an MBR partition table or boot sector; not formatting it")
	}
	if off, ok := firstData(read, size); ok {
		return "", fmt.Errorf("it holds data at byte %d (%d MiB) of no known kind; not formatting it", off, off/mib)
	}
	return classified(contentBlank)
}

// firstData returns the offset of the first non-zero byte in the zero
// windows.
func firstData(read func(off, n int64) []byte, size int64) (int64, bool) {
	check := func(off, n int64) (int64, bool) {
		for done := int64(0); done < n; done += mib {
			b := read(off+done, min(mib, n-done))
			if allZero(b) {
				// The common case, compared a word at a time: a byte loop
				// over the 32 MiB took 0.3-0.4 s of a TCG boot.
				continue
			}
			for j, c := range b {
				if c != 0 {
					return off + done + int64(j), true
				}
			}
		}
		return 0, false
	}
	if off, ok := check(0, min(zeroWindow, size)); ok {
		return off, true
	}
	if off, ok := check(max(0, size-zeroWindow), min(zeroWindow, size)); ok {
		return off, true
	}
	for off := int64(zeroWindow); off < size-zeroWindow; off += sampleStride {
		if o, ok := check(off, sampleSize); ok {
			return o, true
		}
	}
	return 0, false
}

// dataInodeRatio is one inode per 64 KiB: etcd keeps tens of files (the
// bolt db, WAL segments, snapshots), so the default 8 KiB ratio only adds
// inode table to write at first boot (64 MiB written on 1 GiB, against 36).
const dataInodeRatio = 64 << 10

// formatData makes a blank (or interrupted) disk ours: the intent record
// first, synced, then an ext4 file system labelled etcd-data over all but
// the last MiB, synced. The record stays until ClearIntent. storage is
// the device (a file in tests).
func formatData(storage backend.Storage, size int64, in intent) error {
	w, err := storage.Writable()
	if err != nil {
		return err
	}
	in.Size = size
	if _, err := w.WriteAt(encodeIntent(in), size-intentSpace); err != nil {
		return fmt.Errorf("write the first-format record: %w", err)
	}
	if err := syncStorage(storage); err != nil {
		return err
	}
	d, err := diskfs.OpenBackend(storage, diskfs.WithSectorSize(512))
	if err != nil {
		return err
	}
	fsSize := (size - intentSpace) / 4096 * 4096
	// No resize inode: the one go-diskfs writes on small disks (1 KiB
	// blocks) is not valid (e2fsck: "Resize inode not valid"), and the
	// kernel refuses to grow through it; without one, the kernel's
	// online resize converts to meta_bg as it grows (Grow).
	params := &ext4.Params{VolumeName: layout.DataLabel, InodeRatio: dataInodeRatio,
		Features: []ext4.FeatureOpt{ext4.WithFeatureReservedGDTBlocksForExpansion(false)}}
	if _, err := ext4.Create(d.Backend, fsSize, 0, d.LogicalBlocksize, params); err != nil {
		return err
	}
	return syncStorage(storage)
}

func syncStorage(s backend.Storage) error {
	if f, err := s.Sys(); err == nil && f != nil {
		return f.Sync()
	}
	return nil
}

// ClearIntent zeroes the intent record of a finished first format: the
// new file system is mounted and marked, and no longer to be redone.
func ClearIntent(dev string) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := deviceSize(f)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(make([]byte, sampleSize), size-intentSpace); err != nil {
		return err
	}
	return f.Sync()
}

// deviceSize is the size of a block device or file.
func deviceSize(f *os.File) (int64, error) {
	return f.Seek(0, io.SeekEnd)
}

// Prepare finds the data disk, formats it only under the disk
// rule, and mounts it at dir, read-only until Claim. It reports
// whether this boot formatted it. A disk that will start without etcd
// data (formatted now, or ours with no WAL) is taken only once the
// device window has closed with no other disk of this appliance's label.
func Prepare(dir string, o Owner, window time.Duration) (dev, detail string, formatted bool, err error) {
	in := intent{Cluster: o.Cluster, Member: o.Member}
	w := &deviceWindow{opened: windowOpened, window: window}
	dev, err = w.findDataDisk()
	if err != nil {
		return "", "", false, err
	}
	found := w.looks[len(w.looks)-1].At
	f, err := os.Open(dev)
	if err != nil {
		return "", "", false, err
	}
	size, err := deviceSize(f)
	f.Close()
	if err == nil {
		var r io.ReaderAt
		var c io.Closer
		if r, c, err = openDirect(dev); err == nil {
			start := time.Now()
			var content string
			var wr *windowReader
			if wr, err = newWindowReader(r, size, zeroWindow+mib, zeroWindow); err != nil {
				err = fmt.Errorf("%w: not provably blank, nor provably ours; not touching it", err)
			} else {
				content, err = inspect(wr, size)
			}
			if err == nil && content == contentOurs {
				err = checkGeometry(r, size)
			}
			c.Close()
			took := time.Since(start)
			if err == nil && content != contentOurs {
				err = w.confirmAlone(dev)
			}
			if err == nil {
				detail, formatted, err = formatIfAllowed(dev, size, content, in)
				detail = fmt.Sprintf("found %s into the device window, inspected in %s: %s", found.Round(100*time.Millisecond), took.Round(time.Millisecond), detail)
			}
		}
	}
	if err != nil {
		return "", "", false, fmt.Errorf("data disk %s: %w", dev, err)
	}
	if err := mountReadOnly(dev, dir); err != nil {
		return "", "", false, err
	}
	if !formatted && !hasEtcdData(onDisk(dir).dataDir) && !hasEtcdData(dir) {
		// Ours, but no WAL (a first boot cut before etcd wrote one):
		// this member will start without data.
		if err := w.confirmAlone(dev); err != nil {
			unix.Unmount(dir, 0)
			return "", "", false, fmt.Errorf("data disk %s: %w", dev, err)
		}
		detail += "; no etcd data, and no other disk of this appliance's label within the device window"
	}
	return dev, fmt.Sprintf("%s: %s, mounted read-only on %s until claimed", dev, detail, dir), formatted, nil
}

// mountReadOnly mounts the data disk dev on dir read-only: nothing on
// it changes before Claim has read its marker and found it this
// member's (a clean ext4 mounted read-only is not written to; a
// read-write mount alone updates its superblock).
func mountReadOnly(dev, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount(dev, dir, "ext4", unix.MS_RDONLY|dataMountFlags, ""); err != nil {
		return fmt.Errorf("mount %s read-only on %s: %w", dev, dir, err)
	}
	return nil
}

// formatIfAllowed formats dev when content allows it.
func formatIfAllowed(dev string, size int64, content string, in intent) (string, bool, error) {
	switch content {
	case contentOurs:
		return "existing " + contentOurs, false, nil
	case contentBlank, contentInterrupted:
	default:
		return "", false, fmt.Errorf("unexpected content %q", content)
	}
	start := time.Now()
	storage, err := file.OpenFromPath(dev, false)
	if err != nil {
		return "", false, err
	}
	defer storage.Close()
	var zeroed int64
	if err := formatData(zeroingStorage{storage, &zeroed}, size, in); err != nil {
		return "", false, fmt.Errorf("format: %w", err)
	}
	return fmt.Sprintf("%s, formatted ext4 in %s (%d MiB of it zeroed by the device)", content, time.Since(start).Round(time.Millisecond), zeroed>>20), true, nil
}
