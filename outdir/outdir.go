// Package outdir owns the layout of etcdimg's output directory and the one
// way files get into it: staged beside their destination, synced, then
// renamed into place, so that an interrupted run never leaves a
// half-written file, and a new directory appears whole or not at all.
//
// It knows paths, not contents.
package outdir

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// Layout names the files under an output directory.
type Layout string

// Default is the output directory when --out is not given.
const Default = "etcdimg-out"

func (l Layout) Dir() string                { return string(l) }
func (l Layout) Spec() string               { return filepath.Join(string(l), "etcdimg.yaml") }
func (l Layout) PKI() string                { return filepath.Join(string(l), "pki") }
func (l Layout) PKIFile(name string) string { return filepath.Join(string(l), "pki", name) }
func (l Layout) Ignition(member string) string {
	return filepath.Join(string(l), "ignition", member+".ign")
}
func (l Layout) Butane(member string) string {
	return filepath.Join(string(l), "ignition", member+".bu")
}
func (l Layout) EtcdctlEnv() string         { return filepath.Join(string(l), "etcdctl.env") }
func (l Layout) Prometheus() string         { return filepath.Join(string(l), "prometheus.yml") }
func (l Layout) ImagesDir() string          { return filepath.Join(string(l), "images") }
func (l Layout) Image(member string) string { return filepath.Join(string(l), "images", member+".img") }
func (l Layout) Rel(path string) (string, bool) {
	r, err := filepath.Rel(string(l), path)
	return r, err == nil
}

// File is one file to write, by its path relative to the output directory.
type File struct {
	Path string
	Data []byte
	Mode fs.FileMode
}

// dirMode is the mode of directories etcdimg creates: the tree holds
// private keys, so it is not world-readable.
const dirMode = 0o700

// Write puts files under dir and returns the relative paths it changed,
// in the order given. A file whose bytes and mode already match is left
// alone (its mtime too). If dir does not exist it is built under a
// temporary name beside it and renamed into place once complete.
func Write(dir string, files []File) ([]string, error) {
	for _, f := range files {
		if !filepath.IsLocal(f.Path) {
			return nil, fmt.Errorf("outdir: %q is not a path inside the output directory", f.Path)
		}
	}
	switch _, err := os.Stat(dir); {
	case errors.Is(err, fs.ErrNotExist):
		return writeNew(dir, files)
	case err != nil:
		return nil, fmt.Errorf("outdir: %w", err)
	}

	var changed []File
	for _, f := range files {
		if same(filepath.Join(dir, f.Path), f) {
			continue
		}
		changed = append(changed, f)
	}
	// Stage every changed file first; only then rename, so a failure while
	// writing leaves every destination as it was.
	var staged []string
	cleanup := func() {
		for _, s := range staged {
			os.Remove(s)
		}
	}
	for _, f := range changed {
		dst := filepath.Join(dir, f.Path)
		if err := os.MkdirAll(filepath.Dir(dst), dirMode); err != nil {
			cleanup()
			return nil, fmt.Errorf("outdir: %w", err)
		}
		tmp, err := stage(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*", f)
		if err != nil {
			cleanup()
			return nil, err
		}
		staged = append(staged, tmp)
	}
	var paths []string
	for i, f := range changed {
		if err := os.Rename(staged[i], filepath.Join(dir, f.Path)); err != nil {
			cleanup()
			return paths, fmt.Errorf("outdir: %w", err)
		}
		paths = append(paths, f.Path)
	}
	if err := syncDirs(dir, changed); err != nil {
		return paths, err
	}
	return paths, nil
}

func writeNew(dir string, files []File) ([]string, error) {
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("outdir: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("outdir: %w", err)
	}
	fail := func(err error) ([]string, error) {
		os.RemoveAll(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fail(fmt.Errorf("outdir: %w", err))
	}
	var paths []string
	for _, f := range files {
		dst := filepath.Join(tmp, f.Path)
		if err := os.MkdirAll(filepath.Dir(dst), dirMode); err != nil {
			return fail(fmt.Errorf("outdir: %w", err))
		}
		staged, err := stage(filepath.Dir(dst), ".tmp-*", f)
		if err != nil {
			return fail(err)
		}
		if err := os.Rename(staged, dst); err != nil {
			return fail(fmt.Errorf("outdir: %w", err))
		}
		paths = append(paths, f.Path)
	}
	if err := syncDirs(tmp, files); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fail(fmt.Errorf("outdir: %w", err))
	}
	return paths, syncDir(parent)
}

// stage writes f to a new temporary file in dir and syncs it.
func stage(dir, pattern string, f File) (string, error) {
	t, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", fmt.Errorf("outdir: %w", err)
	}
	name := t.Name()
	err = t.Chmod(f.Mode)
	if err == nil {
		_, err = t.Write(f.Data)
	}
	if err == nil {
		err = t.Sync()
	}
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", fmt.Errorf("outdir: write %s: %w", f.Path, err)
	}
	return name, nil
}

func same(path string, f File) bool {
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != f.Mode.Perm() || st.Size() != int64(len(f.Data)) {
		return false
	}
	b, err := os.ReadFile(path)
	return err == nil && bytes.Equal(b, f.Data)
}

func syncDirs(root string, files []File) error {
	dirs := []string{root}
	for _, f := range files {
		dirs = append(dirs, filepath.Join(root, filepath.Dir(f.Path)))
	}
	slices.Sort(dirs)
	for _, d := range slices.Compact(dirs) {
		if err := syncDir(d); err != nil {
			return err
		}
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("outdir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("outdir: sync %s: %w", dir, err)
	}
	return nil
}
