package deb

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNaturalCompare(t *testing.T) {
	for _, tc := range []struct{ a, b string }{
		{"linux-image-6.1.0-9-cloud", "linux-image-6.1.0-48-cloud"},
		{"a1", "a2"}, {"a", "ab"}, {"x-009", "x-10"},
	} {
		if naturalCompare(tc.a, tc.b) >= 0 || naturalCompare(tc.b, tc.a) <= 0 {
			t.Errorf("%s should sort before %s", tc.a, tc.b)
		}
	}
}

// TestReadsDebianPackages reads the real packages `make deps` downloaded.
func TestReadsDebianPackages(t *testing.T) {
	dir := CacheDir()
	for _, tc := range []struct {
		pattern, pkg, file string
	}{
		{Bootloader, "systemd-boot-efi", "usr/lib/systemd/boot/efi/systemd-bootx64.efi"},
		{Kernel, "linux-image-", "boot/vmlinuz-"},
	} {
		p, err := Find(dir, tc.pattern)
		if err != nil {
			t.Fatal(err)
		}
		ctl, err := Control(p)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(Field(ctl, "Package"), tc.pkg) || Field(ctl, "Version") == "" {
			t.Errorf("%s: control %q", p, ctl)
		}
		found := false
		err = Walk(p, func(h *tar.Header, name string, r io.Reader) error {
			if strings.HasPrefix(name, tc.file) && h.Typeflag == tar.TypeReg {
				head := make([]byte, 2)
				io.ReadFull(r, head)
				found = string(head) == "MZ" // both are PE/COFF EFI images
				return ErrStop
			}
			return nil
		})
		if err != nil || !found {
			t.Errorf("%s: %s not found as an EFI image (%v)", filepath.Base(p), tc.file, err)
		}
	}
	junk := filepath.Join(t.TempDir(), "junk.deb")
	os.WriteFile(junk, []byte("not an archive"), 0o644)
	if err := Walk(junk, func(*tar.Header, string, io.Reader) error { return nil }); err == nil || !strings.Contains(err.Error(), "not a Debian package") {
		t.Errorf("junk: %v", err)
	}
}
