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
	dir := testCache(t)
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

// testCache is where `make deps` put the packages: $ETCDIMG_DEB_CACHE
// (the Makefile exports it), else the module's .cache/deb.
func testCache(t *testing.T) string {
	t.Helper()
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	d, err := filepath.Abs(filepath.Join("..", "..", ".cache", "deb"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestCachedPackagesMatchTheirIndex: a package is used only if its
// SHA-256 is the one the Debian index it came with gives; a package with
// one byte changed, or one the index does not list, is refused.
func TestCachedPackagesMatchTheirIndex(t *testing.T) {
	cache := testCache(t)
	real, err := FindVerified(cache, Bootloader)
	if err != nil {
		t.Fatalf("the downloaded package: %v", err)
	}
	b, _ := os.ReadFile(real)
	idx, _ := os.ReadFile(filepath.Join(cache, IndexFile))
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, IndexFile), idx, 0o644)
	tampered := append([]byte(nil), b...)
	tampered[len(tampered)/2] ^= 1
	os.WriteFile(filepath.Join(dir, filepath.Base(real)), tampered, 0o644)
	if _, err := FindVerified(dir, Bootloader); err == nil || !strings.Contains(err.Error(), "but the Debian index says") {
		t.Errorf("tampered package: %v", err)
	}
	os.Remove(filepath.Join(dir, filepath.Base(real)))
	os.WriteFile(filepath.Join(dir, "systemd-boot-efi_999_amd64.deb"), b, 0o644)
	if _, err := FindVerified(dir, Bootloader); err == nil || !strings.Contains(err.Error(), "not in the Debian index") {
		t.Errorf("unlisted package: %v", err)
	}
	os.Remove(filepath.Join(dir, IndexFile))
	if _, err := FindVerified(dir, Bootloader); err == nil || !strings.Contains(err.Error(), "no Debian index") {
		t.Errorf("no index: %v", err)
	}
}

// TestCacheIsNotSearchedUpward: with no $ETCDIMG_DEB_CACHE, the cache is
// the one beside the executable's bin/ directory only; a .cache/deb in a
// parent of the working directory is never used.
func TestCacheIsNotSearchedUpward(t *testing.T) {
	t.Setenv(CacheEnv, "")
	parent := t.TempDir()
	os.MkdirAll(filepath.Join(parent, ".cache", "deb"), 0o755)
	wd := filepath.Join(parent, "a", "b")
	os.MkdirAll(wd, 0o755)
	t.Chdir(wd)
	exe, _ := os.Executable()
	if got, want := CacheDir(), filepath.Join(filepath.Dir(filepath.Dir(exe)), ".cache", "deb"); got != want {
		t.Errorf("CacheDir() = %s, want %s", got, want)
	}
}
