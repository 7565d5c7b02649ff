// Package deb reads Debian binary packages in pure Go: the ar archive, its
// data.tar (xz, zstd, gzip or plain) and the files inside. It reads; it
// never installs, runs maintainer scripts or resolves dependencies.
package deb

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Walk calls fn for every entry of the package's data archive, with the
// entry's path cleaned of its leading "./" and a reader of its contents.
// Returning ErrStop from fn ends the walk early without error.
//
// The first walk of a package keeps its decompressed data.tar beside it,
// in .unpacked/, named by the package's SHA-256; later walks read that
// (xz is the slow part). A directory that cannot be written only costs
// the speed-up.
func Walk(debPath string, fn func(h *tar.Header, name string, r io.Reader) error) error {
	cached, err := unpacked(debPath)
	if err != nil {
		return err
	}
	if cached != "" {
		f, err := os.Open(cached)
		if err == nil {
			defer f.Close()
			return walkTar(debPath, "data.tar", bufio.NewReaderSize(f, 1<<20), fn)
		}
	}
	f, err := os.Open(debPath)
	if err != nil {
		return fmt.Errorf("deb: %w", err)
	}
	defer f.Close()
	data, member, err := findMember(bufio.NewReaderSize(f, 1<<20), "data.tar")
	if err != nil {
		return fmt.Errorf("deb: %s: %w", debPath, err)
	}
	dr, closeFn, err := decompress(data, member)
	if err != nil {
		return fmt.Errorf("deb: %s: %s: %w", debPath, member, err)
	}
	defer closeFn()
	return walkTar(debPath, member, dr, fn)
}

func walkTar(debPath, member string, r io.Reader, fn func(h *tar.Header, name string, r io.Reader) error) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("deb: %s: %s: %w", debPath, member, err)
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		if err := fn(h, name, tr); err != nil {
			if errors.Is(err, ErrStop) {
				return nil
			}
			return err
		}
	}
}

// unpacked returns the path of the package's decompressed data.tar,
// making it on first use; "" when it cannot be kept.
func unpacked(debPath string) (string, error) {
	f, err := os.Open(debPath)
	if err != nil {
		return "", fmt.Errorf("deb: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("deb: %w", err)
	}
	dir := filepath.Join(filepath.Dir(debPath), ".unpacked")
	cached := filepath.Join(dir, hex.EncodeToString(h.Sum(nil))+".tar")
	if _, err := os.Stat(cached); err == nil {
		return cached, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", nil
	}
	data, member, err := findMember(bufio.NewReaderSize(f, 1<<20), "data.tar")
	if err != nil {
		return "", fmt.Errorf("deb: %s: %w", debPath, err)
	}
	dr, closeFn, err := decompress(data, member)
	if err != nil {
		return "", fmt.Errorf("deb: %s: %s: %w", debPath, member, err)
	}
	defer closeFn()
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return "", nil
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, dr); err != nil {
		tmp.Close()
		return "", fmt.Errorf("deb: %s: %s: %w", debPath, member, err)
	}
	if err := tmp.Close(); err != nil {
		return "", nil
	}
	if err := os.Rename(tmp.Name(), cached); err != nil {
		return "", nil
	}
	return cached, nil
}

// ErrStop ends a Walk early.
var ErrStop = errors.New("deb: stop")

// Control returns the package's control file (the "Package:", "Version:"
// stanza).
func Control(debPath string) ([]byte, error) {
	f, err := os.Open(debPath)
	if err != nil {
		return nil, fmt.Errorf("deb: %w", err)
	}
	defer f.Close()
	r, member, err := findMember(bufio.NewReader(f), "control.tar")
	if err != nil {
		return nil, fmt.Errorf("deb: %s: %w", debPath, err)
	}
	dr, closeFn, err := decompress(r, member)
	if err != nil {
		return nil, fmt.Errorf("deb: %s: %w", debPath, err)
	}
	defer closeFn()
	tr := tar.NewReader(dr)
	for {
		h, err := tr.Next()
		if err != nil {
			return nil, fmt.Errorf("deb: %s: no control file: %w", debPath, err)
		}
		if path.Clean(h.Name) == "control" {
			return io.ReadAll(tr)
		}
	}
}

// Field returns one field of a control file.
func Field(control []byte, name string) string {
	for _, line := range strings.Split(string(control), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// findMember reads the ar archive up to the member whose name starts with
// prefix and returns a reader limited to it.
func findMember(r *bufio.Reader, prefix string) (io.Reader, string, error) {
	magic := make([]byte, 8)
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != "!<arch>\n" {
		return nil, "", errors.New("not a Debian package (no ar header)")
	}
	hdr := make([]byte, 60)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return nil, "", fmt.Errorf("no %s member", prefix)
		}
		name := strings.TrimSuffix(strings.TrimSpace(string(hdr[0:16])), "/")
		size, err := strconv.ParseInt(strings.TrimSpace(string(hdr[48:58])), 10, 64)
		if err != nil || size < 0 {
			return nil, "", fmt.Errorf("bad ar member size %q", hdr[48:58])
		}
		if strings.HasPrefix(name, prefix) {
			return io.LimitReader(r, size), name, nil
		}
		if _, err := r.Discard(int(size + size%2)); err != nil {
			return nil, "", fmt.Errorf("truncated ar member %s", name)
		}
	}
}

func decompress(r io.Reader, member string) (io.Reader, func(), error) {
	switch path.Ext(member) {
	case ".xz":
		xr, err := xz.NewReader(r)
		return xr, func() {}, err
	case ".zst":
		zr, err := zstd.NewReader(r)
		if err != nil {
			return nil, nil, err
		}
		return zr, zr.Close, nil
	case ".gz":
		gr, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, err
		}
		return gr, func() { gr.Close() }, nil
	case ".tar":
		return r, func() {}, nil
	}
	return nil, nil, fmt.Errorf("unknown compression %q", path.Ext(member))
}
