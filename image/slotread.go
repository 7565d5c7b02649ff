package image

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"

	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/slot"
)

// ReadSlot reads the slot a built raw image boots, as the bundle that
// installs it on a running member: what `upgrade` sends. A built image
// has one slot; its manifest and signature are the build's.
func ReadSlot(imagePath string) (slot.Bundle, slot.Manifest, error) {
	fail := func(err error) (slot.Bundle, slot.Manifest, error) {
		return slot.Bundle{}, slot.Manifest{}, fmt.Errorf("image: read the slot of %s: %w", imagePath, err)
	}
	d, err := diskfs.Open(imagePath, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return fail(err)
	}
	defer d.Close()
	fs, err := d.GetFilesystem(1)
	if err != nil {
		return fail(err)
	}
	// read reads p to its size in its directory: go-diskfs may return a
	// FAT file's last cluster whole, zeros after the end included.
	read := func(p string) ([]byte, error) {
		infos, err := fs.ReadDir(strings.TrimPrefix(path.Dir(p), "/"))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		size := int64(-1)
		for _, fi := range infos {
			if strings.EqualFold(fi.Name(), path.Base(p)) {
				info, err := fi.Info()
				if err != nil {
					return nil, fmt.Errorf("%s: %w", p, err)
				}
				size = info.Size()
			}
		}
		if size < 0 {
			return nil, fmt.Errorf("%s: no such file", p)
		}
		f, err := fs.OpenFile(p, os.O_RDONLY)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		defer f.Close()
		data, err := io.ReadAll(io.LimitReader(f, size))
		if err == nil && int64(len(data)) != size {
			err = fmt.Errorf("%s: %d of %d bytes", p, len(data), size)
		}
		return data, err
	}
	entries, err := fs.ReadDir(strings.TrimPrefix(layout.EntryDir, "/"))
	if err != nil {
		return fail(fmt.Errorf("%s: %w (an image built before slots: move the member to a slotted image with `roll --keep-disks`)", layout.EntryDir, err))
	}
	var entry slot.Entry
	n := 0
	for _, fi := range entries {
		if e, ok := slot.ParseEntry(fi.Name()); ok {
			entry, n = e, n+1
		}
	}
	if n != 1 {
		return fail(fmt.Errorf("%d boot entries in %s, a built image has one", n, layout.EntryDir))
	}
	dir := path.Join(layout.SlotsDir, entry.ID)
	b := slot.Bundle{Files: map[string][]byte{}}
	if b.Manifest, err = read(path.Join(dir, layout.SlotManifestFile)); err != nil {
		return fail(err)
	}
	if b.Signature, err = read(path.Join(dir, layout.SlotSignatureFile)); err != nil {
		return fail(err)
	}
	var m slot.Manifest
	if err := json.Unmarshal(b.Manifest, &m); err != nil {
		return fail(err)
	}
	if err := m.Check(); err != nil {
		return fail(err)
	}
	for _, f := range m.Files {
		p := path.Join(dir, f.Name)
		if f.Name == slot.FileUKI {
			p = path.Join(layout.EntryDir, entry.Name())
		}
		data, err := read(p)
		if err != nil {
			return fail(err)
		}
		b.Files[f.Name] = data
	}
	return b, m, nil
}

// ManifestFile is images/manifest.json: what each image of the last
// build is and boots.
const ManifestFile = "manifest.json"

// ImageRecord is one image of images/manifest.json.
type ImageRecord struct {
	Member string `json:"member"`
	File   string `json:"file"`
	Format string `json:"format"`
	SHA256 string `json:"sha256"`
	// Slot is the slot the image boots: its ID, its digest (what the
	// member reports running) and its manifest, with the kernel, etcd,
	// node binary and config digests.
	Slot       string         `json:"slot,omitempty"`
	SlotDigest string         `json:"slot_digest,omitempty"`
	Manifest   *slot.Manifest `json:"manifest,omitempty"`
}

// writeManifest writes images/manifest.json for files.
func writeManifest(dir outdir.Layout, files []Built) error {
	var recs []ImageRecord
	for _, f := range files {
		sum, err := fileDigest(f.Path)
		if err != nil {
			return err
		}
		r := ImageRecord{Member: f.Member, File: path.Base(f.Path), Format: f.Format, SHA256: hex.EncodeToString(sum[:])}
		if f.Format == "raw" {
			b, m, err := ReadSlot(f.Path)
			if err != nil {
				return err
			}
			r.Slot, r.SlotDigest, r.Manifest = m.ID, slot.Digest(b.Manifest), &m
		}
		recs = append(recs, r)
	}
	data, err := json.MarshalIndent(map[string]any{"images": recs}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path.Join(dir.ImagesDir(), ManifestFile), append(data, '\n'), 0o644)
}

// ReadManifest reads images/manifest.json of dir: the raw images' slot
// digests, by member; nil when no build wrote one.
func ReadManifest(dir outdir.Layout) (map[string]ImageRecord, error) {
	raw, err := os.ReadFile(path.Join(dir.ImagesDir(), ManifestFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var m struct{ Images []ImageRecord }
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("image: %s: %w", ManifestFile, err)
	}
	out := map[string]ImageRecord{}
	for _, r := range m.Images {
		if r.Format == "raw" {
			out[r.Member] = r
		}
	}
	return out, nil
}
