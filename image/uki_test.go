package image

import (
	"bytes"
	"debug/pe"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUKIAppendsSectionsThePEWayAndToolsAgree builds a unified kernel
// image from the real stub and reads it back with debug/pe and with
// binutils' objdump: every section holds its bytes, lies past the stub's
// own in memory and in the file, and the image size covers them all.
func TestUKIAppendsSectionsThePEWayAndToolsAgree(t *testing.T) {
	stub := realStub()
	secs := []UKISection{
		{".osrel", []byte("ID=etcdimg\n")},
		{".cmdline", []byte("console=ttyS0 quiet")},
		{".initrd", bytes.Repeat([]byte("I"), 1<<20+3)},
		{".linux", bytes.Repeat([]byte("K"), 3<<20+1)},
	}
	uki, err := UKI(stub, secs)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secs {
		got, err := UKISectionData(uki, s.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, s.Data) {
			t.Errorf("%s: %d bytes back, want the %d written", s.Name, len(got), len(s.Data))
		}
	}
	f, err := pe.NewFile(bytes.NewReader(uki))
	if err != nil {
		t.Fatal(err)
	}
	opt := f.OptionalHeader.(*pe.OptionalHeader64)
	sf, _ := pe.NewFile(bytes.NewReader(stub))
	var prevEnd, prevOff uint32
	for i, s := range f.Sections {
		if s.VirtualAddress < prevEnd || (s.Size > 0 && s.Offset < prevOff) {
			t.Errorf("section %s overlaps the one before it", s.Name)
		}
		if i >= len(sf.Sections) && (s.VirtualAddress%opt.SectionAlignment != 0 || s.Offset%opt.FileAlignment != 0) {
			t.Errorf("section %s is not aligned", s.Name)
		}
		prevEnd, prevOff = s.VirtualAddress+s.VirtualSize, s.Offset+s.Size
	}
	if opt.SizeOfImage < prevEnd {
		t.Errorf("SizeOfImage %#x ends before the last section (%#x)", opt.SizeOfImage, prevEnd)
	}
	if last := f.Sections[len(f.Sections)-1].Name; last != ".linux" {
		t.Errorf("last section %s, want .linux", last)
	}

	path := filepath.Join(t.TempDir(), "uki.efi")
	os.WriteFile(path, uki, 0o644)
	out, err := exec.Command("objdump", "-h", path).CombinedOutput()
	if err != nil {
		t.Fatalf("objdump: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "pei-x86-64") {
		t.Errorf("objdump does not read a PE32+ image:\n%s", out)
	}
	for _, s := range secs {
		if !strings.Contains(string(out), " "+s.Name+" ") {
			t.Errorf("objdump lists no %s:\n%s", s.Name, out)
		}
	}
}

// TestUKIRefusesStubsItWouldBreak: a signed stub (its signature would no
// longer match), a stub with no room for the section headers, and bytes
// that are not a PE image are each refused with a clear error.
func TestUKIRefusesStubsItWouldBreak(t *testing.T) {
	stub := realStub()
	le := binary.LittleEndian
	peOff := int(le.Uint32(stub[peSigOffset:]))
	optOff := peOff + 4 + coffHeaderSize
	signed := bytes.Clone(stub)
	le.PutUint32(signed[optOff+112+8*securityDirectory+4:], 1024)
	one := []UKISection{{".linux", []byte("K")}}
	many := make([]UKISection, 64)
	for i := range many {
		many[i] = UKISection{".s", []byte("x")}
	}
	for _, c := range []struct {
		name     string
		stub     []byte
		sections []UKISection
		want     string
	}{
		{"signed stub", signed, one, "is signed"},
		{"no room for headers", stub, many, "no room"},
		{"not a PE image", []byte("MZ but nothing else"), one, "EFI stub"},
		{"long section name", stub, []UKISection{{".toolongname", nil}}, "longer than 8 bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := UKI(c.stub, c.sections)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err %v, want one saying %q", err, c.want)
			}
		})
	}
}
