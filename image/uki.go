package image

import (
	"bytes"
	"debug/pe"
	"encoding/binary"
	"fmt"
)

// A unified kernel image (UKI) is one EFI binary: systemd's EFI stub
// with the kernel, the initramfs and the command line appended as PE
// sections (.linux, .initrd, .cmdline; .osrel and .uname identify it).
// Firmware starts it as the removable-media loader EFI/BOOT/BOOTX64.EFI,
// so a member boots with no boot menu, no loader configuration and one
// file read, on any UEFI firmware.
//
// UKI appends the sections the way systemd's ukify does: after the
// stub's own, each at the next section-aligned address and file-aligned
// offset, .linux last (the kernel's setup code may use memory past its
// file size; the kernel relocates itself when started by the stub).
type UKISection struct {
	Name string // at most 8 bytes, with the dot
	Data []byte
}

// PE/COFF offsets (the Microsoft PE format specification).
const (
	peSigOffset          = 0x3c // e_lfanew in the MS-DOS header
	coffHeaderSize       = 20
	sectionHeaderSize    = 40
	optSizeOfInitialized = 8 // PE32+ optional header offsets
	optSizeOfImage       = 56
	optCheckSum          = 64
	securityDirectory    = 4 // the certificate table's index among the data directories
	scnInitializedData   = 0x00000040
	scnMemRead           = 0x40000000
)

// UKI returns stub with sections appended. The stub must be an unsigned
// PE32+ image with room in its headers for the new section headers.
func UKI(stub []byte, sections []UKISection) ([]byte, error) {
	fail := func(format string, a ...any) ([]byte, error) {
		return nil, fmt.Errorf("image: unified kernel image: "+format, a...)
	}
	f, err := pe.NewFile(bytes.NewReader(stub))
	if err != nil {
		return fail("EFI stub: %v", err)
	}
	opt, ok := f.OptionalHeader.(*pe.OptionalHeader64)
	if !ok {
		return fail("EFI stub is not a PE32+ (64-bit) image")
	}
	if opt.NumberOfRvaAndSizes > securityDirectory && opt.DataDirectory[securityDirectory].Size != 0 {
		return fail("EFI stub is signed; appending sections would break its signature: use the unsigned stub from systemd-boot-efi")
	}
	out := bytes.Clone(stub)
	le := binary.LittleEndian
	peOff := int(le.Uint32(out[peSigOffset:]))
	coff := peOff + 4
	optOff := coff + coffHeaderSize
	table := optOff + int(f.FileHeader.SizeOfOptionalHeader)
	n := int(f.FileHeader.NumberOfSections)
	end := table + n*sectionHeaderSize
	if end+len(sections)*sectionHeaderSize > int(opt.SizeOfHeaders) {
		return fail("EFI stub has no room for %d more section headers", len(sections))
	}
	for _, s := range f.Sections {
		if int(s.Offset) < end+len(sections)*sectionHeaderSize && s.Size > 0 {
			return fail("EFI stub's section %s starts inside its headers", s.Name)
		}
	}
	var nextVA uint32
	for _, s := range f.Sections {
		nextVA = max(nextVA, s.VirtualAddress+s.VirtualSize)
	}
	salign, falign := opt.SectionAlignment, opt.FileAlignment
	initialized := opt.SizeOfInitializedData
	for i, s := range sections {
		if len(s.Name) > 8 {
			return fail("section name %q is longer than 8 bytes", s.Name)
		}
		va := alignUp(nextVA, salign)
		off := alignUp(uint32(len(out)), falign)
		raw := alignUp(uint32(len(s.Data)), falign)
		out = append(out, make([]byte, int(off)-len(out))...)
		out = append(out, s.Data...)
		out = append(out, make([]byte, int(raw)-len(s.Data))...)
		h := make([]byte, sectionHeaderSize)
		copy(h, s.Name)
		le.PutUint32(h[8:], uint32(len(s.Data))) // VirtualSize
		le.PutUint32(h[12:], va)                 // VirtualAddress
		le.PutUint32(h[16:], raw)                // SizeOfRawData
		le.PutUint32(h[20:], off)                // PointerToRawData
		le.PutUint32(h[36:], scnInitializedData|scnMemRead)
		copy(out[end+i*sectionHeaderSize:], h)
		nextVA = va + uint32(len(s.Data))
		initialized += raw
	}
	le.PutUint16(out[coff+2:], uint16(n+len(sections)))
	le.PutUint32(out[optOff+optSizeOfInitialized:], initialized)
	le.PutUint32(out[optOff+optSizeOfImage:], alignUp(nextVA, salign))
	le.PutUint32(out[optOff+optCheckSum:], 0) // no firmware checks it for EFI applications
	return out, nil
}

func alignUp(v, a uint32) uint32 {
	if a == 0 {
		return v
	}
	return (v + a - 1) / a * a
}

// UKISectionData reads one section of a unified kernel image, for tests
// and for inspecting a built image.
func UKISectionData(uki []byte, name string) ([]byte, error) {
	f, err := pe.NewFile(bytes.NewReader(uki))
	if err != nil {
		return nil, fmt.Errorf("image: unified kernel image: %w", err)
	}
	s := f.Section(name)
	if s == nil {
		return nil, fmt.Errorf("image: unified kernel image has no %s section", name)
	}
	b, err := s.Data()
	if err != nil {
		return nil, err
	}
	return b[:min(len(b), int(s.VirtualSize))], nil
}
