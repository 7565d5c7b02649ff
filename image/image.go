package image

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"

	etcdversion "go.etcd.io/etcd/api/v3/version"

	"etcdimg/image/deb"
	"etcdimg/internal/layout"
	"etcdimg/internal/slot"
)

// Paths on the EFI system partition, shared with firstboot.
const (
	// LoaderPath is the removable-media boot loader: systemd-boot, which
	// boots the first slot in its order (slot.LoaderConf).
	LoaderPath     = "/EFI/BOOT/BOOTX64.EFI"
	LoaderConfPath = layout.LoaderDir + "/loader.conf"
	// stubIn is systemd's EFI stub in Debian's systemd-boot-efi package,
	// and bootIn systemd-boot itself.
	stubIn = "usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	bootIn = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
)

// KernelCmdline is the appliance's kernel command line: the serial console
// that clouds and QEMU capture, and a reboot (QEMU: exit) on panic rather
// than a hang. cryptomgr.notests skips the kernel's boot-time self-tests
// of its crypto algorithms (0.35-0.4 s of every boot under TCG, measured
// on the bare kernel, best of 4 interleaved): they check the kernel's
// own implementations, not inputs, and the appliance's TLS is Go's. The
// kernel ignores it in FIPS mode. softlockup_panic=1 turns a kernel
// stuck in a soft lockup into that panic, and so a reboot: a member under
// TCG was seen stuck for 25 minutes in ksoftirqd after its PID 1 asked
// for a reboot into a new slot, where a reboot would have booted the slot
// (its try counted) or, tries spent, the old one.
const KernelCmdline = "console=tty0 console=ttyS0,115200n8 panic=-1 softlockup_panic=1 quiet cryptomgr.notests"

// sourceDateEpoch is the fixed time stamped on every FAT entry:
// 2020-01-01T00:00:00Z. go-diskfs reads SOURCE_DATE_EPOCH for it.
const sourceDateEpoch = "1577836800"

// Boot is what every member's image shares: the boot loader, the kernel
// and the initramfs.
type Boot struct {
	Stub          []byte // systemd's linuxx64.efi.stub
	Loader        []byte // systemd-bootx64.efi
	Kernel        []byte // vmlinuz
	KernelVersion string
	Initrd        []byte // compressed
	InitrdRaw     []byte // uncompressed, for inspection
	Modules       []string
	// Node is the node binary, which goes on the ESP
	// (layout.NodeBinaryPath), not into the initramfs.
	Node []byte
	// Signer signs each slot's manifest; SignerPub, its public key, goes
	// into every slot. The private key never leaves the build machine.
	Signer    ed25519.PrivateKey
	SignerPub []byte
}

// Inputs name the files a Boot is made from.
type Inputs struct {
	KernelDeb, BootloaderDeb string
	NodeBinary               string // the static multi-call binary, run from the ESP
	InitBinary               string // the initramfs's /init (cmd/etcdinit)
}

// PrepareBoot reads the packages and the node binary and builds the
// initramfs. It is done once per build and shared by every member.
func PrepareBoot(in Inputs) (*Boot, error) {
	k, err := ReadKernel(in.KernelDeb)
	if err != nil {
		return nil, err
	}
	mods, err := k.LoadOrder(ApplianceModules)
	if err != nil {
		return nil, err
	}
	stub, err := ReadStub(in.BootloaderDeb)
	if err != nil {
		return nil, err
	}
	loader, err := ReadLoader(in.BootloaderDeb)
	if err != nil {
		return nil, err
	}
	node, err := os.ReadFile(in.NodeBinary)
	if err != nil {
		return nil, fmt.Errorf("image: node binary: %w; build it with `make`", err)
	}
	initBin, err := os.ReadFile(in.InitBinary)
	if err != nil {
		return nil, fmt.Errorf("image: init binary: %w; build it with `make`", err)
	}
	if err := checkStatic("node binary "+in.NodeBinary, node); err != nil {
		return nil, err
	}
	if err := checkStatic("init binary "+in.InitBinary, initBin); err != nil {
		return nil, err
	}
	initrd, raw, err := Initramfs(initBin, mods)
	if err != nil {
		return nil, err
	}
	b := &Boot{Stub: stub, Loader: loader, Kernel: k.Vmlinuz, KernelVersion: k.Version, Initrd: initrd, InitrdRaw: raw, Node: node}
	for _, m := range mods {
		b.Modules = append(b.Modules, m.Name)
	}
	return b, nil
}

// ReadStub reads systemd's EFI stub from Debian's systemd-boot-efi package.
func ReadStub(debPath string) ([]byte, error) { return readDebFile(debPath, stubIn) }

// ReadLoader reads systemd-boot from Debian's systemd-boot-efi package.
func ReadLoader(debPath string) ([]byte, error) { return readDebFile(debPath, bootIn) }

// readDebFile reads one file of Debian's systemd-boot-efi package.
func readDebFile(debPath, want string) ([]byte, error) {
	var stub []byte
	err := deb.Walk(debPath, func(h *tar.Header, name string, r io.Reader) error {
		if name == want {
			b, err := io.ReadAll(r)
			stub = b
			if err == nil {
				err = deb.ErrStop
			}
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("image: read boot loader package: %w", err)
	}
	if stub == nil {
		return nil, fmt.Errorf("image: %s holds no %s; pass Debian's systemd-boot-efi package", debPath, want)
	}
	return stub, nil
}

// Member names the image being written.
type Member struct {
	Cluster, Name string
	// ClusterID is the member's recorded cluster ID (hex), which its
	// slots' manifests name: a node takes updates of its own cluster only.
	ClusterID string
	Ignition  []byte
	// Restore, when set, is the path of a verified snapshot the image
	// carries in a partition of its own (layout.RestoreLabel) after the
	// ESP: it is too large for the config, which names its SHA-256.
	Restore string
	// Platform is written on the kernel command line (layout.PlatformArg)
	// for firstboot; "" writes none (firstboot then reads fw_cfg, then
	// the ESP, as on qemu and metal).
	Platform string
}

// Generic reports whether the image carries no member's config: a cloud
// image, whose config is each instance's user-data.
func (m Member) Generic() bool { return m.Ignition == nil }

// writeRaw writes m's raw disk to a new temporary file in dir and
// returns its path; the caller renames it into place or removes it.
// CreateTemp makes the file 0600 before its first byte: the image holds
// the member's private key from the moment the ESP is written.
func writeRaw(dir string, b *Boot, m Member) (string, error) {
	tmp, err := os.CreateTemp(dir, "."+m.Name+".raw.tmp-*")
	if err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	name := tmp.Name()
	err = build(tmp, b, m)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fixFAT32(name, mib)
	}
	if err != nil {
		os.Remove(name)
		return "", fmt.Errorf("image: %s: %w", m.Name, err)
	}
	return name, nil
}

const (
	mib        = 1 << 20
	sector     = 512
	minESPSize = 40 * mib // FAT32 needs at least 65525 clusters
)

// Files returns the ESP's files for m, by path: systemd-boot, its
// configuration, and one slot (its boot entry and its directory) that
// is good from the start. The other slot is left empty for an update.
func (b *Boot) Files(m Member) (map[string][]byte, error) {
	bundle, err := b.Slot(m)
	if err != nil {
		return nil, err
	}
	var man slot.Manifest
	if err := json.Unmarshal(bundle.Manifest, &man); err != nil {
		return nil, err
	}
	dir := layout.SlotsDir + "/" + man.ID
	files := map[string][]byte{
		LoaderPath:     b.Loader,
		LoaderConfPath: []byte(slot.LoaderConf),
		layout.EntryDir + "/" + (slot.Entry{Gen: 1, ID: man.ID}).Name(): bundle.Files[slot.FileUKI],
		dir + "/" + layout.SlotManifestFile:                             bundle.Manifest,
		dir + "/" + layout.SlotSignatureFile:                            bundle.Signature,
	}
	for name, data := range bundle.Files {
		if name != slot.FileUKI {
			files[dir+"/"+name] = data
		}
	}
	return files, nil
}

// Slot is m's slot as signed bundle: the UKI, whose command line names
// the slot, the node binary, the config and the signing key.
func (b *Boot) Slot(m Member) (slot.Bundle, error) {
	if b.Signer == nil || b.Loader == nil || b.Node == nil {
		return slot.Bundle{}, fmt.Errorf("image: no image-signing key, boot loader or node binary to build slots with")
	}
	cmdline := m.Cmdline()
	id := slot.ID(b.Stub, b.Kernel, b.Initrd, []byte(cmdline), b.Node, m.Ignition, b.SignerPub)
	uki, err := b.UKI(cmdline + " " + layout.SlotArg + "=" + id)
	if err != nil {
		return slot.Bundle{}, err
	}
	files := map[string][]byte{slot.FileUKI: uki, slot.FileNode: b.Node, slot.FileSigningKey: b.SignerPub}
	if !m.Generic() {
		files[slot.FileConfig] = m.Ignition
	}
	man := slot.Manifest{Format: slot.Format, ID: id, Platform: m.Platform, Kernel: b.KernelVersion, Etcd: etcdversion.Version}
	if !m.Generic() {
		man.Cluster, man.Member = m.ClusterID, m.Name
	}
	return slot.NewBundle(man, files, b.Signer)
}

// UKI is the unified kernel image that boots b with cmdline: systemd's
// stub, then .osrel, .cmdline, .uname, .initrd and .linux, as ukify
// orders them.
func (b *Boot) UKI(cmdline string) ([]byte, error) {
	osrel := fmt.Sprintf("ID=etcdimg\nNAME=etcdimg\nPRETTY_NAME=\"etcdimg appliance (Linux %s)\"\n", b.KernelVersion)
	return UKI(b.Stub, []UKISection{
		{".osrel", []byte(osrel)},
		{".cmdline", []byte(cmdline)},
		{".uname", []byte(b.KernelVersion)},
		{".initrd", b.Initrd},
		{".linux", b.Kernel},
	})
}

// Cmdline is the kernel command line of m's image.
func (m Member) Cmdline() string {
	if m.Platform == "" {
		return KernelCmdline
	}
	return KernelCmdline + " " + layout.PlatformArg + "=" + m.Platform
}

func build(f *os.File, b *Boot, m Member) error {
	files, err := b.Files(m)
	if err != nil {
		return err
	}
	var content int64
	for _, data := range files {
		content += int64(len(data))
	}
	// Room for two slots, the next one up to half as large again as
	// this one, and the FAT's own.
	espSize := max(minESPSize, roundUp(content*5/2+8*mib, mib))
	var snap *os.File
	var restoreSize int64
	if m.Restore != "" && m.Generic() {
		// One cloud image boots every instance and is uploaded as a
		// shared machine image: it holds no key and never any data.
		return fmt.Errorf("image: %s is a generic cloud image, shared by every instance: it never carries a snapshot (the cluster's data); build per-member images (--platform metal) for a restore", m.Name)
	}
	if m.Restore != "" {
		var err error
		if snap, err = os.Open(m.Restore); err != nil {
			return fmt.Errorf("restore snapshot: %w", err)
		}
		defer snap.Close()
		st, err := snap.Stat()
		if err != nil {
			return fmt.Errorf("restore snapshot: %w", err)
		}
		restoreSize = roundUp(st.Size(), mib)
	}
	diskSize := espSize + restoreSize + 2*mib // 1 MiB before for the GPT and alignment, 1 MiB after for the backup GPT

	if os.Getenv("SOURCE_DATE_EPOCH") == "" {
		os.Setenv("SOURCE_DATE_EPOCH", sourceDateEpoch)
	}
	if err := f.Truncate(diskSize); err != nil {
		return fmt.Errorf("create disk: %w", err)
	}
	d, err := diskfs.OpenBackend(file.New(f, false), diskfs.WithSectorSize(diskfs.SectorSize512))
	if err != nil {
		return fmt.Errorf("create disk: %w", err)
	}
	table := &gpt.Table{
		LogicalSectorSize:  sector,
		PhysicalSectorSize: sector,
		ProtectiveMBR:      true,
		GUID:               guid(m.Cluster, m.Name, "disk"),
		Partitions: []*gpt.Partition{{
			Index: 1,
			Start: mib / sector,
			End:   uint64((mib+espSize)/sector - 1),
			Type:  gpt.EFISystemPartition,
			Name:  layout.ESPLabel,
			GUID:  guid(m.Cluster, m.Name, "esp"),
		}},
	}
	if snap != nil {
		start := mib + espSize
		table.Partitions = append(table.Partitions, &gpt.Partition{
			Index: 2,
			Start: uint64(start / sector),
			End:   uint64((start+restoreSize)/sector - 1),
			Type:  gpt.LinuxFilesystem,
			Name:  layout.RestoreLabel,
			GUID:  guid(m.Cluster, m.Name, "restore"),
		})
	}
	if err := d.Partition(table); err != nil {
		return fmt.Errorf("write GPT: %w", err)
	}
	if snap != nil {
		if _, err := io.Copy(io.NewOffsetWriter(f, mib+espSize), snap); err != nil {
			return fmt.Errorf("write the restore partition: %w", err)
		}
	}
	fs, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 1, FSType: filesystem.TypeFat32, VolumeLabel: "ETCDIMG", Reproducible: true})
	if err != nil {
		return fmt.Errorf("write ESP: %w", err)
	}
	dirs := []string{"/EFI", "/EFI/BOOT", layout.EntryDir, layout.LoaderDir, layout.SlotsDir}
	for p := range files {
		if d := path.Dir(p); !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	for _, dir := range dirs {
		if err := fs.Mkdir(dir); err != nil {
			return fmt.Errorf("write ESP: mkdir %s: %w", dir, err)
		}
	}
	for _, p := range slices.Sorted(maps.Keys(files)) {
		f, err := fs.OpenFile(p, os.O_CREATE|os.O_RDWR)
		if err != nil {
			return fmt.Errorf("write ESP: %s: %w", p, err)
		}
		if _, err := io.Copy(f, bytes.NewReader(files[p])); err != nil {
			return fmt.Errorf("write ESP: %s: %w", p, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("write ESP: %s: %w", p, err)
		}
	}
	return nil
}

// guid derives a stable RFC 4122 GUID (version 5 layout, SHA-256 based)
// from names, so that rebuilding an image gives the same GUIDs.
func guid(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	s := h.Sum(nil)
	s[6] = s[6]&0x0f | 0x50
	s[8] = s[8]&0x3f | 0x80
	return fmt.Sprintf("%X-%X-%X-%X-%X", s[0:4], s[4:6], s[6:8], s[8:10], s[10:16])
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// Built describes one written image file.
type Built struct {
	Member    string // the member, or the generic image's name
	Format    string
	Path      string
	Size      int64  // apparent
	Allocated int64  // blocks on disk
	New       bool   // its bytes differ from the image that was there
	Previous  string // where the image it replaced was moved, if any
}

// FileName is where image m in format f is written in dir: a member's raw
// image is NAME.img (what `etcdimg up` boots), every other file
// NAME + the format's extension.
func FileName(dir string, m Member, f Format) string {
	if f.Name == "raw" && !m.Generic() {
		return filepath.Join(dir, m.Name+".img")
	}
	return filepath.Join(dir, m.Name+f.Ext)
}

// WriteAll writes each image in each format into dir: the raw disk first,
// under a temporary name, then every format from it, each file renamed
// into place when complete. Images are written one after another.
//
// dir is made 0700 (an existing one too: member images hold private
// keys). A file that differs from the one already at its path does not
// destroy it: the old one is moved to dir/previous/, stamped with the
// time, so that a member can be booted from it again.
func WriteAll(dir string, images []Member, b *Boot, formats []Format, o FormatOptions) ([]Built, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	var out []Built
	for _, m := range images {
		raw, err := writeRaw(dir, b, m)
		if err != nil {
			return out, err
		}
		for _, f := range formats {
			var tmp string
			if f.write != nil {
				if tmp, err = writeTemp(dir, m.Name+f.Ext, func(tmp string) error { return f.write(raw, tmp, o) }); err != nil {
					os.Remove(raw)
					return out, fmt.Errorf("image: %s: %s: %w", m.Name, f.Name, err)
				}
			} else {
				// The raw disk itself is the raw format: it is renamed
				// into place, and the other formats need a copy.
				if tmp, err = writeTemp(dir, m.Name+f.Ext, func(tmp string) error { return os.Link(raw, tmp) }); err != nil {
					os.Remove(raw)
					return out, err
				}
			}
			bt, err := install(tmp, FileName(dir, m, f))
			if err != nil {
				os.Remove(tmp)
				os.Remove(raw)
				return out, err
			}
			bt.Member, bt.Format = m.Name, f.Name
			out = append(out, bt)
		}
		os.Remove(raw)
	}
	return out, nil
}

// writeTemp runs write on a fresh temporary path in dir (a 0600 file that
// write may replace) and returns the path, or removes it on failure.
func writeTemp(dir, base string, write func(tmp string) error) (string, error) {
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	tmp := f.Name()
	f.Close()
	os.Remove(tmp)
	if err := write(tmp); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return tmp, nil
}

// finalName is the base name a temporary file of writeTemp is renamed to.
func finalName(tmp string) string {
	base := filepath.Base(tmp)
	if i := strings.LastIndex(base, ".tmp-"); i > 0 {
		return strings.TrimPrefix(base[:i], ".")
	}
	return base
}

// install renames the finished file tmp to path, keeping a different file
// that was there in dir/previous/.
func install(tmp, path string) (Built, error) {
	if err := os.Chmod(tmp, 0o600); err != nil {
		return Built{}, fmt.Errorf("image: %w", err)
	}
	if err := syncFile(tmp); err != nil {
		return Built{}, err
	}
	dir := filepath.Dir(path)
	oldSum, hadOld := fileSum(path)
	prev := ""
	if hadOld {
		// Keep a hard link to the old file while the new one is renamed
		// over it; drop it if the bytes did not change.
		if err := os.MkdirAll(filepath.Join(dir, "previous"), 0o700); err != nil {
			return Built{}, fmt.Errorf("image: %w", err)
		}
		base := filepath.Base(path)
		ext := filepath.Ext(base)
		if strings.HasSuffix(base, ".tar.gz") {
			ext = ".tar.gz"
		}
		prev = filepath.Join(dir, "previous", fmt.Sprintf("%s-%s%s", strings.TrimSuffix(base, ext), time.Now().UTC().Format("20060102T150405.000"), ext))
		if err := os.Link(path, prev); err != nil {
			return Built{}, fmt.Errorf("image: keep the previous %s: %w", path, err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		if prev != "" {
			os.Remove(prev)
		}
		return Built{}, fmt.Errorf("image: %w", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return Built{}, fmt.Errorf("image: %w", err)
	}
	bt := Built{Path: path, Size: st.Size(), Allocated: allocated(st), New: true}
	if hadOld {
		if newSum, _ := fileSum(path); newSum == oldSum {
			os.Remove(prev)
			bt.New = false
		} else {
			bt.Previous = prev
		}
	}
	return bt, nil
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return fmt.Errorf("image: sync: %w", err)
	}
	return nil
}

// fileSum is the SHA-256 of the file at path, and whether it exists.
func fileSum(path string) ([32]byte, bool) {
	sum, err := fileDigest(path)
	return sum, err == nil
}

// checkStatic refuses what the appliance cannot run: anything but a
// statically linked x86-64 ELF executable. The appliance has no dynamic
// loader and no libc, and at boot the kernel reports a program's missing
// loader as the program itself missing ("no such file or directory").
func checkStatic(what string, b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("image: %s is not an ELF executable (%v); build it with `make`", what, err)
	}
	if f.Machine != elf.EM_X86_64 || (f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN) {
		return fmt.Errorf("image: %s is a %s %s, not an x86-64 executable; build it with `make`", what, f.Machine, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			interp, _ := io.ReadAll(io.LimitReader(p.Open(), 256))
			return fmt.Errorf("image: %s is dynamically linked (it needs %s, which the appliance does not have); build it with CGO_ENABLED=0, as `make` does", what, strings.TrimRight(string(interp), "\x00"))
		}
	}
	return nil
}
