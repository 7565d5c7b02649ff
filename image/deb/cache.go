package deb

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// CacheEnv names the directory of downloaded packages when set.
const CacheEnv = "ETCDIMG_DEB_CACHE"

// CacheDir returns where `make` keeps the packages it downloaded with
// apt-get download: $ETCDIMG_DEB_CACHE, else .cache/deb beside the bin/
// directory holding the running executable (where the Makefile puts
// both). Nowhere else: a package planted in some parent directory of the
// working directory is never picked up.
func CacheDir() string {
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	if exe, err := os.Executable(); err == nil {
		return filepath.Join(filepath.Dir(filepath.Dir(exe)), ".cache", "deb")
	}
	return filepath.Join(".cache", "deb")
}

// IndexFile, in the cache, holds the Debian index records (apt-cache show)
// of the packages downloaded there, written by `make` in the same step.
const IndexFile = "Packages"

// FindVerified is Find in the cache dir, and then checks the package's
// SHA-256 against the record of IndexFile that names it.
func FindVerified(dir, pattern string) (string, error) {
	p, err := Find(dir, pattern)
	if err != nil {
		return "", err
	}
	if err := Verify(filepath.Join(dir, IndexFile), p); err != nil {
		return "", err
	}
	return p, nil
}

// Verify checks that the SHA-256 of the package at path is the one the
// Debian index file gives for its file name.
func Verify(index, path string) error {
	idx, err := os.ReadFile(index)
	if err != nil {
		return fmt.Errorf("deb: %s has no Debian index beside it (%v); run `make deps` to download it again", path, err)
	}
	want := ""
	base := strings.ReplaceAll(filepath.Base(path), "%7e", "~")
	for _, rec := range strings.Split(string(idx), "\n\n") {
		var file, sum string
		for _, line := range strings.Split(rec, "\n") {
			if v, ok := strings.CutPrefix(line, "Filename: "); ok {
				file = filepath.Base(strings.TrimSpace(v))
			}
			if v, ok := strings.CutPrefix(line, "SHA256: "); ok {
				sum = strings.TrimSpace(v)
			}
		}
		if file == base {
			want = sum
		}
	}
	if want == "" {
		return fmt.Errorf("deb: %s is not in the Debian index %s; delete it and run `make deps`", path, index)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("deb: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("deb: %s: %w", path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("deb: %s has SHA-256 %s, but the Debian index says %s; delete it and run `make deps`", path, got, want)
	}
	return nil
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
