package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
)

// A Format is one way to ship the raw disk: each writes its file from the
// finished raw image, and is byte-reproducible like it (the same raw
// image gives the same bytes). Adding a format is adding a row to
// Formats.
type Format struct {
	Name string // as --format names it
	For  string // where it is used, for help and errors
	// Ext is the file's extension; a member's raw image keeps .img.
	Ext string
	// Tool is the program the writer runs, "" when it is written here.
	Tool, ToolPackage string
	// QemuFormat is the format qemu-img and QEMU name it by, "" when
	// QEMU cannot open it as it is (the GCE tarball).
	QemuFormat string
	write      func(raw, out string, o FormatOptions) error
}

// FormatOptions tune the writers.
type FormatOptions struct {
	// Compress makes qcow2 images zlib-compressed (smaller uploads,
	// slower first reads).
	Compress bool
}

// Formats are the output formats, in the order they are written.
var Formats = []Format{
	{Name: "raw", For: "QEMU, metal, AWS (import-snapshot), OpenStack", Ext: ".raw", QemuFormat: "raw"},
	{Name: "qcow2", For: "OpenStack, Proxmox, libvirt", Ext: ".qcow2", Tool: "qemu-img", ToolPackage: "qemu-utils", QemuFormat: "qcow2", write: writeQcow2},
	{Name: "vhd", For: "Azure (fixed VHD, 1 MiB aligned)", Ext: ".vhd", QemuFormat: "vpc", write: writeVHD},
	{Name: "gce", For: "GCP (disk.raw in a GNU tar, gzip'd)", Ext: ".tar.gz", write: writeGCE},
	{Name: "vmdk", For: "VMware, AWS VM import (stream-optimized)", Ext: ".vmdk", Tool: "qemu-img", ToolPackage: "qemu-utils", QemuFormat: "vmdk", write: writeVMDK},
}

// ParseFormats reads --format's comma-separated list and checks, before
// any work, that each is known and that its tool is installed.
func ParseFormats(list string) ([]Format, error) {
	var out []Format
	seen := map[string]bool{}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" || seen[name] {
			continue
		}
		seen[name] = true
		f, ok := FormatNamed(name)
		if !ok {
			return nil, fmt.Errorf("--format: unknown format %q; use one or more of %s, comma-separated", name, strings.Join(FormatNames(), ", "))
		}
		if f.Tool != "" {
			if _, err := exec.LookPath(f.Tool); err != nil {
				return nil, fmt.Errorf("--format %s: %s is not installed; install Debian's %s (or run `make deps`)", name, f.Tool, f.ToolPackage)
			}
		}
		out = append(out, f)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--format: empty; use one or more of %s", strings.Join(FormatNames(), ", "))
	}
	return out, nil
}

// FormatNamed finds a format by its --format name.
func FormatNamed(name string) (Format, bool) {
	for _, f := range Formats {
		if f.Name == name {
			return f, true
		}
	}
	return Format{}, false
}

// FormatNames lists the --format names.
func FormatNames() []string {
	var n []string
	for _, f := range Formats {
		n = append(n, f.Name)
	}
	return n
}

// writeQcow2 converts with qemu-img, whose qcow2 output has no time stamp
// or random field: the same raw image gives the same bytes.
func writeQcow2(raw, out string, o FormatOptions) error {
	args := []string{"convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1"}
	if o.Compress {
		args = append(args, "-c")
	}
	return qemuImg(append(args, raw, out)...)
}

var vmdkCID = regexp.MustCompile(`(?m)^CID=[0-9a-f]+$`)

// writeVMDK converts with qemu-img into a stream-optimized VMDK. qemu-img
// draws the descriptor's content ID at random (printed without leading
// zeros) and names the file in it, so the file is written under its
// final name in a directory of its own, and the descriptor is then
// rewritten in its zero-padded area with an ID taken from the raw
// image's bytes: the same raw image gives the same bytes.
func writeVMDK(raw, out string, _ FormatOptions) error {
	dir, err := os.MkdirTemp(filepath.Dir(out), ".vmdk-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, finalName(out))
	if err := qemuImg("convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, tmp); err != nil {
		return err
	}
	f, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// The sparse extent header: magic "KDMV", then (little-endian) the
	// descriptor's offset and size in sectors at bytes 28 and 36.
	head := make([]byte, 512)
	if _, err := io.ReadFull(f, head); err != nil {
		return err
	}
	if string(head[:4]) != "KDMV" {
		return errors.New("vmdk: qemu-img wrote no sparse extent header")
	}
	off := int64(binary.LittleEndian.Uint64(head[28:])) * sector
	size := int64(binary.LittleEndian.Uint64(head[36:])) * sector
	if off == 0 || size == 0 || size > mib {
		return fmt.Errorf("vmdk: descriptor at sector %d, %d bytes", off/sector, size)
	}
	desc := make([]byte, size)
	if _, err := f.ReadAt(desc, off); err != nil {
		return err
	}
	text := desc
	if n := bytes.IndexByte(desc, 0); n >= 0 {
		text = desc[:n]
	}
	sum, err := fileDigest(raw)
	if err != nil {
		return err
	}
	if !vmdkCID.Match(text) {
		return errors.New("vmdk: no CID= line in qemu-img's descriptor")
	}
	text = vmdkCID.ReplaceAll(text, fmt.Appendf(nil, "CID=%08x", binary.BigEndian.Uint32(sum[:4])))
	if int64(len(text)) > size {
		return errors.New("vmdk: the descriptor outgrew its area")
	}
	fixed := make([]byte, size)
	copy(fixed, text)
	if _, err := f.WriteAt(fixed, off); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

func qemuImg(args ...string) error {
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img %s: %v: %s", args[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}

// writeGCE writes GCE's import format: the raw disk as disk.raw, the only
// member of a tar in the old GNU format, gzip'd. Time stamps and owners
// are fixed.
func writeGCE(raw, out string, _ FormatOptions) error {
	in, size, err := openRaw(raw)
	if err != nil {
		return err
	}
	defer in.Close()
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	zw, err := gzip.NewWriterLevel(f, gzip.BestSpeed)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	hdr := &tar.Header{
		Name: "disk.raw", Mode: 0o600, Size: size, Typeflag: tar.TypeReg,
		ModTime: time.Unix(epoch, 0).UTC(), Format: tar.FormatGNU,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if _, err := io.Copy(tw, in); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// epoch is sourceDateEpoch as a number.
var epoch, _ = strconv.ParseInt(sourceDateEpoch, 10, 64)

// writeVHD writes a fixed VHD: the raw disk, whose size is a whole number
// of MiB (Azure's rule), followed by the 512-byte footer of Microsoft's
// Virtual Hard Disk Image Format Specification. The footer's time stamp
// is the fixed build time and its unique ID is derived from the raw
// image's bytes.
func writeVHD(raw, out string, _ FormatOptions) error {
	in, size, err := openRaw(raw)
	if err != nil {
		return err
	}
	defer in.Close()
	if size%mib != 0 {
		return fmt.Errorf("vhd: the raw disk is %d bytes, not a whole number of MiB", size)
	}
	sum, err := fileDigest(raw)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := copySparse(f, in, size); err != nil {
		return err
	}
	if _, err := f.WriteAt(vhdFooter(size, sum), size); err != nil {
		return err
	}
	return f.Close()
}

// vhdFooter is a fixed disk's footer for a disk of size bytes.
func vhdFooter(size int64, id [32]byte) []byte {
	b := make([]byte, 512)
	be := binary.BigEndian
	copy(b[0:8], "conectix")
	be.PutUint32(b[8:], 2)                        // features: reserved bit set
	be.PutUint32(b[12:], 0x00010000)              // file format version 1.0
	be.PutUint64(b[16:], ^uint64(0))              // data offset: none (fixed disk)
	be.PutUint32(b[24:], uint32(epoch-946684800)) // seconds since 2000-01-01
	// Creator application: "qem2" tells readers (QEMU among them) to
	// take the size from the footer, not from the CHS geometry, which
	// rounds it down; Azure does not read the field.
	copy(b[28:32], "qem2")
	be.PutUint32(b[32:], 0x00010000)   // creator version
	copy(b[36:40], "Wi2k")             // creator host OS, as Hyper-V writes
	be.PutUint64(b[40:], uint64(size)) // original size
	be.PutUint64(b[48:], uint64(size)) // current size
	c, h, s := chs(size / sector)
	be.PutUint16(b[56:], c)
	b[58], b[59] = h, s
	be.PutUint32(b[60:], 2) // disk type: fixed
	copy(b[68:84], id[:16])
	var sum uint32
	for _, x := range b {
		sum += uint32(x)
	}
	be.PutUint32(b[64:], ^sum)
	return b
}

// chs is the VHD specification's geometry for a disk of n sectors.
func chs(n int64) (uint16, uint8, uint8) {
	n = min(n, 65535*16*255)
	var spt, heads, cth int64
	if n >= 65535*16*63 {
		spt, heads = 255, 16
		cth = n / spt
	} else {
		spt = 17
		cth = n / spt
		heads = max((cth+1023)/1024, 4)
		if cth >= heads*1024 || heads > 16 {
			spt, heads = 31, 16
			cth = n / spt
		}
		if cth >= heads*1024 {
			spt, heads = 63, 16
			cth = n / spt
		}
	}
	return uint16(cth / heads), uint8(heads), uint8(spt)
}

// copySparse copies n bytes, leaving holes where the source is zero, so
// that a fixed VHD of a mostly empty disk takes little space.
func copySparse(dst *os.File, src io.Reader, n int64) error {
	buf := make([]byte, 64<<10)
	zero := make([]byte, len(buf))
	var off int64
	for off < n {
		k, err := io.ReadFull(src, buf[:min(int64(len(buf)), n-off)])
		if err != nil {
			return err
		}
		if !bytes.Equal(buf[:k], zero[:k]) {
			if _, err := dst.WriteAt(buf[:k], off); err != nil {
				return err
			}
		}
		off += int64(k)
	}
	return dst.Truncate(n)
}

// openRaw opens the raw image and tells its size.
func openRaw(raw string) (*os.File, int64, error) {
	in, err := os.Open(raw)
	if err != nil {
		return nil, 0, err
	}
	st, err := in.Stat()
	if err != nil {
		in.Close()
		return nil, 0, err
	}
	return in, st.Size(), nil
}

func fileDigest(path string) ([32]byte, error) {
	var sum [32]byte
	f, err := os.Open(path)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
