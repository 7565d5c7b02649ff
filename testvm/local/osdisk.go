package local

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// OS disks. Under `up` a member boots from a disk of its own,
// DiskDir/NAME-os.img, attached read-write: systemd-boot renames its
// boot entries at every boot (boot counting), and the node writes new
// boot slots into it and reboots into them. It starts as a sparse copy of
// the member's built image, and NAME-os.img.source records the SHA-256 of
// the image it was copied from. `up` again from an unchanged image keeps
// the disk and the slots the member wrote since; a new image, and every
// replace or roll (which re-image the machine), set the old disk aside
// in DiskDir/previous/, never deleted, and boot a fresh copy.

// previousDir, in DiskDir, keeps the OS disks that fresh copies replaced.
const previousDir = "previous"

// copyChunk is the unit of the sparse copy: a chunk of zeros is a hole.
const copyChunk = 1 << 20

// OSDiskPath is member name's OS disk in diskDir.
func OSDiskPath(diskDir, name string) string { return filepath.Join(diskDir, name+"-os.img") }

// sourceFile records, beside an OS disk, the SHA-256 of the image it was
// copied from.
func sourceFile(osDisk string) string { return osDisk + ".source" }

// prepareOSDisk makes m's OS disk (m.OSDisk, else OSDiskPath) ready to
// boot m.Image: unless fresh, it keeps the disk when its recorded source
// is the image's digest now; else it moves the disk (and its record)
// aside to diskDir/previous/NAME-os-STAMP.img and writes a fresh copy.
// replace and roll ask for a fresh one: they re-image the machine, and a
// disk kept from the same image would boot whatever slot the member has
// since installed (upgrade) instead of the image asked for. It sets
// m.OSDisk and returns a line for the operator and the old disk's new
// path ("" when none was set aside). m must be stopped.
func prepareOSDisk(diskDir string, m *MemberState, now time.Time, fresh bool) (line, aside string, err error) {
	if m.OSDisk == "" {
		m.OSDisk = OSDiskPath(diskDir, m.Name)
	}
	disk := m.OSDisk
	_, err = os.Lstat(disk)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", "", fmt.Errorf("cluster: OS disk of %s: %w", m.Name, err)
	}
	if exists {
		if recorded, err := os.ReadFile(sourceFile(disk)); err == nil && !fresh {
			digest, err := fileSHA256(m.Image)
			if err != nil {
				return "", "", fmt.Errorf("cluster: image of %s: %w", m.Name, err)
			}
			if strings.TrimSpace(string(recorded)) == digest {
				return fmt.Sprintf("%s: OS disk %s kept: %s is unchanged (sha256 %.12s…)", m.Name, disk, m.Image, digest), "", nil
			}
		}
		prev := filepath.Join(diskDir, previousDir)
		if err := os.MkdirAll(prev, 0o700); err != nil {
			return "", "", fmt.Errorf("cluster: %w", err)
		}
		aside = filepath.Join(prev, fmt.Sprintf("%s-os-%s.img", m.Name, now.UTC().Format("20060102T150405.000")))
		if err := moveAside(disk, aside); err != nil {
			return "", "", err
		}
		if err := moveAside(sourceFile(disk), sourceFile(aside)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", aside, err
		}
	}
	digest, err := sparseCopy(m.Image, disk)
	if err != nil {
		return "", aside, fmt.Errorf("cluster: OS disk of %s from %s: %w", m.Name, m.Image, err)
	}
	if err := writeFileAtomic(sourceFile(disk), []byte(digest+"\n")); err != nil {
		return "", aside, fmt.Errorf("cluster: OS disk of %s: %w", m.Name, err)
	}
	line = fmt.Sprintf("%s: OS disk %s is a fresh copy of %s (sha256 %.12s…)", m.Name, disk, m.Image, digest)
	if aside != "" {
		line += "; the old one kept at " + aside
	}
	return line, aside, nil
}

// moveAside renames src to dst, which must not exist: nothing set aside
// is ever overwritten.
func moveAside(src, dst string) error {
	if _, err := os.Lstat(src); err != nil {
		return err
	}
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("cluster: set aside %s: %s exists; move it away first", src, dst)
	}
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("cluster: set aside %s: %w", src, err)
	}
	return nil
}

// fileSHA256 is the hex SHA-256 of the file at path.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, copyChunk)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sparseCopy copies src to dst (mode 0600) through a temporary file
// beside dst and a rename, seeking over every chunk of src that is all
// zeros so that it stays a hole, and returns the hex SHA-256 of what it
// copied. An image is mostly holes: the ESP's free space and the GPT's
// gaps.
func sparseCopy(src, dst string) (digest string, err error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			out.Close()
			os.Remove(out.Name())
		}
	}()
	if err := out.Chmod(0o600); err != nil {
		return "", err
	}
	h := sha256.New()
	buf, zeros := make([]byte, copyChunk), make([]byte, copyChunk)
	var size int64
	for {
		n, rerr := io.ReadFull(in, buf)
		if n > 0 {
			h.Write(buf[:n])
			if bytes.Equal(buf[:n], zeros[:n]) {
				if _, err := out.Seek(int64(n), io.SeekCurrent); err != nil {
					return "", err
				}
			} else if _, err := out.Write(buf[:n]); err != nil {
				return "", err
			}
			size += int64(n)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return "", rerr
		}
	}
	// A trailing hole has no write to give the file its length.
	if err := out.Truncate(size); err != nil {
		return "", err
	}
	if err := out.Sync(); err != nil {
		return "", err
	}
	if err := out.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(out.Name(), dst); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeFileAtomic writes data to path (mode 0600) through a temporary
// file beside it and a rename.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
