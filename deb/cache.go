package deb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// CacheEnv names the directory of downloaded packages when set.
const CacheEnv = "ETCDIMG_DEB_CACHE"

// CacheDir returns where `make` keeps the packages it downloaded with
// apt-get download: $ETCDIMG_DEB_CACHE, else .cache/deb beside the bin/
// directory holding the running executable, else .cache/deb in the
// nearest directory above the working directory that has one.
func CacheDir() string {
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	if exe, err := os.Executable(); err == nil {
		d := filepath.Join(filepath.Dir(filepath.Dir(exe)), ".cache", "deb")
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			return d
		}
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			c := filepath.Join(d, ".cache", "deb")
			if st, err := os.Stat(c); err == nil && st.IsDir() {
				return c
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return filepath.Join(".cache", "deb")
}

// Kernel and Bootloader are the file-name patterns of the packages an
// image is made from: Debian's cloud kernel (the versioned package, not
// the meta-package that only depends on it) and systemd-boot's EFI files.
const (
	Kernel     = "linux-image-[0-9]*-cloud-amd64_*.deb"
	Bootloader = "systemd-boot-efi_*.deb"
)

// Find returns the package in dir matching pattern; with several, the one
// whose name sorts last (the newest version, for Debian's naming).
func Find(dir, pattern string) (string, error) {
	m, err := filepath.Glob(filepath.Join(dir, pattern))
	if err != nil {
		return "", fmt.Errorf("deb: %w", err)
	}
	m = slices.DeleteFunc(m, func(p string) bool { return strings.HasSuffix(p, ".partial") })
	if len(m) == 0 {
		return "", errors.New("deb: no " + pattern + " in " + dir + "; run `make deps` to download it, or pass the .deb with a flag")
	}
	slices.SortFunc(m, naturalCompare)
	return m[len(m)-1], nil
}

// naturalCompare orders names with their digit runs compared as numbers,
// so that 6.1.0-48 sorts after 6.1.0-9.
func naturalCompare(a, b string) int {
	for a != "" && b != "" {
		da, db := digits(a), digits(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := len(na) - len(nb); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return int(a[0]) - int(b[0])
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func digits(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}
