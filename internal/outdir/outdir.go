// Package outdir owns the layout of etcdimg's output directory and the one
// way files get into it: staged beside their destination, synced, then
// renamed into place, so that an interrupted run never leaves a
// half-written file, and a new directory appears whole or not at all.
//
// It knows paths, not contents.
package outdir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Layout names the files under an output directory.
type Layout string

// Default is the output directory when --out is not given.
const Default = "etcdimg-out"

func (l Layout) Dir() string                { return string(l) }
func (l Layout) Spec() string               { return filepath.Join(string(l), SpecFile) }
func (l Layout) PKI() string                { return filepath.Join(string(l), PKIDir) }
func (l Layout) PKIFile(name string) string { return filepath.Join(string(l), PKIDir, name) }
func (l Layout) Ignition(member string) string {
	return filepath.Join(string(l), IgnitionDir, member+".ign")
}
func (l Layout) Butane(member string) string {
	return filepath.Join(string(l), IgnitionDir, member+".bu")
}
func (l Layout) EtcdctlEnv() string { return filepath.Join(string(l), EtcdctlEnvFile) }
func (l Layout) Prometheus() string { return filepath.Join(string(l), PrometheusFile) }
func (l Layout) Dashboard() string  { return filepath.Join(string(l), DashboardFile) }

// ClusterRecord names the cluster the directory's images belong to (its
// ID and token), recorded at the first render and kept across
// membership changes (render.ClusterRecord).
func (l Layout) ClusterRecord() string { return filepath.Join(string(l), ClusterRecordFile) }
func (l Layout) ImagesDir() string     { return filepath.Join(string(l), ImagesDir) }
func (l Layout) Image(member string) string {
	return filepath.Join(string(l), ImagesDir, member+".img")
}

// UpgradeImages is where `upgrade` writes the images whose slots it
// installs on the members of a cloud platform, apart from the generic
// image that is uploaded.
func (l Layout) UpgradeImages(platform string) string {
	return filepath.Join(string(l), ImagesDir, UpgradeImagesDir, platform)
}

// RunDir holds what a cluster under `up` needs while it runs (consoles,
// sockets, its state file and lock, the tool configs for its forwarded
// ports); DisksDir its members' data disks, kept across down and up.
func (l Layout) RunDir() string   { return filepath.Join(string(l), RunDirName) }
func (l Layout) DisksDir() string { return filepath.Join(string(l), DisksDirName) }

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
	if _, err := Recover(dir); err != nil {
		return nil, err
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
	if err := commit(dir, changed, staged); err != nil {
		cleanup()
		return nil, err
	}
	var paths []string
	for _, f := range changed {
		paths = append(paths, f.Path)
	}
	return paths, nil
}

// journalName is the commit journal in the output directory: present
// only while a commit's renames are under way.
const journalName = ".etcdimg-commit.json"

// journalEntry is one rename of a commit: the staged file, its
// destination, and the hard link that keeps the destination's old bytes
// ("" when the destination is new).
type journalEntry struct {
	Staged, Dest, Backup string
}

// crashAfter, in tests, stops a commit after that many renames as a
// crash would (no undo, the journal left behind); -1 in production.
var crashAfter = -1

var errCrash = errors.New("outdir: simulated crash")

// rename is os.Rename; tests make it fail.
var rename = os.Rename

// commit renames the staged files into place as one change: every old
// destination is first hard-linked aside and the plan written to a
// journal; if a rename fails, the ones done are undone; if the process
// dies midway, the next Write finds the journal and undoes them. So the
// directory holds either every new file or every old one (the spec, the
// PKI and the configs never disagree).
func commit(dir string, changed []File, staged []string) error {
	var entries []journalEntry
	undoLinks := func() {
		for _, e := range entries {
			if e.Backup != "" {
				os.Remove(filepath.Join(dir, e.Backup))
			}
		}
	}
	for i, f := range changed {
		e := journalEntry{Staged: mustRel(dir, staged[i]), Dest: f.Path}
		dst := filepath.Join(dir, f.Path)
		if _, err := os.Lstat(dst); err == nil {
			e.Backup = filepath.Join(filepath.Dir(f.Path), "."+filepath.Base(f.Path)+".old")
			os.Remove(filepath.Join(dir, e.Backup))
			if err := os.Link(dst, filepath.Join(dir, e.Backup)); err != nil {
				undoLinks()
				return fmt.Errorf("outdir: keep %s while committing: %w", f.Path, err)
			}
		}
		entries = append(entries, e)
	}
	j, _ := json.Marshal(entries)
	if _, err := stageAs(dir, journalName, j); err != nil {
		undoLinks()
		return err
	}
	for i, e := range entries {
		if i == crashAfter {
			return errCrash
		}
		if err := rename(filepath.Join(dir, e.Staged), filepath.Join(dir, e.Dest)); err != nil {
			rollBack(dir, entries)
			undoLinks()
			os.Remove(filepath.Join(dir, journalName))
			return fmt.Errorf("outdir: %s: %w; nothing was changed", e.Dest, err)
		}
	}
	if err := syncDirs(dir, changed); err != nil {
		return err
	}
	undoLinks()
	os.Remove(filepath.Join(dir, journalName))
	return syncDir(dir)
}

// rollBack undoes the renames of entries: the old file comes back from
// its link, a file that was new is removed.
func rollBack(dir string, entries []journalEntry) error {
	var errs []error
	for _, e := range entries {
		dst := filepath.Join(dir, e.Dest)
		if e.Backup != "" {
			if _, err := os.Lstat(filepath.Join(dir, e.Backup)); err == nil {
				if err := os.Rename(filepath.Join(dir, e.Backup), dst); err != nil {
					errs = append(errs, err)
				}
				// Renaming a link over another link of the same file
				// does nothing (POSIX): the destination was never
				// replaced, and the link goes.
				os.Remove(filepath.Join(dir, e.Backup))
			}
			continue
		}
		if _, err := os.Lstat(filepath.Join(dir, e.Staged)); errors.Is(err, fs.ErrNotExist) {
			// It was renamed into place: it is the new file.
			if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	for _, e := range entries {
		os.Remove(filepath.Join(dir, e.Staged))
	}
	return errors.Join(errs...)
}

// Recover finishes what an interrupted commit left: with its journal
// present, every rename it made is undone, so the directory is as it was
// before that run. It reports whether there was anything to undo.
func Recover(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, journalName))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("outdir: %w", err)
	}
	var entries []journalEntry
	if err := json.Unmarshal(b, &entries); err != nil {
		return false, fmt.Errorf("outdir: %s is damaged (%v); restore the directory from a backup or remove the file after checking etcdimg.yaml, pki/ and ignition/ agree", journalName, err)
	}
	for _, e := range entries {
		for _, p := range []string{e.Staged, e.Dest, e.Backup} {
			if p != "" && !filepath.IsLocal(p) {
				return false, fmt.Errorf("outdir: %s names %q, outside the directory; remove the journal by hand", journalName, p)
			}
		}
	}
	if err := rollBack(dir, entries); err != nil {
		return false, fmt.Errorf("outdir: undo the interrupted commit: %w", err)
	}
	if err := os.Remove(filepath.Join(dir, journalName)); err != nil {
		return false, fmt.Errorf("outdir: %w", err)
	}
	return true, syncDir(dir)
}

func mustRel(dir, path string) string {
	r, err := filepath.Rel(dir, path)
	if err != nil {
		return path
	}
	return r
}

// stageAs writes data to dir/name through a synced temporary file.
func stageAs(dir, name string, data []byte) (string, error) {
	tmp, err := stage(dir, "."+name+".tmp-*", File{Path: name, Data: data, Mode: 0o600})
	if err != nil {
		return "", err
	}
	dst := filepath.Join(dir, name)
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("outdir: %w", err)
	}
	return dst, syncDir(dir)
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

// CheckFlag checks an --out value before anything reads or writes it.
func CheckFlag(dir string) error {
	if dir == "" {
		return fmt.Errorf("--out is empty; name the output directory (default %s)", Default)
	}
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		return fmt.Errorf("--out %s is a file, not a directory; name a directory (a new one is created)", dir)
	}
	return nil
}

// PrivateDirs hold private keys (pki), configs with keys (ignition) and
// images with keys (images), clients' and the Kubernetes API server's keys,
// and the S3 credentials (s3): owner-only.
var PrivateDirs = []string{PKIDir, IgnitionDir, ImagesDir, ClientsDir, KubeDir, S3Dir}

// Guard checks the private directories of an existing output directory
// before a run reads or writes them. A symlink to a directory that other
// users can write, or that another user owns, is refused: the keys would
// be written where others can replace them. A real directory open to
// others is made 0700, and a private key file readable by others is made
// 0600; both are reported, because what was readable may have been read.
func Guard(dir string) (warnings []string, err error) {
	for _, name := range PrivateDirs {
		p := filepath.Join(dir, name)
		lst, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return warnings, fmt.Errorf("outdir: %w", err)
		}
		st, err := os.Stat(p)
		if err != nil {
			return warnings, fmt.Errorf("outdir: %s: %w", p, err)
		}
		if !st.IsDir() {
			return warnings, fmt.Errorf("outdir: %s is not a directory; move it aside", p)
		}
		owner := st.Sys().(*syscall.Stat_t).Uid
		if lst.Mode()&fs.ModeSymlink != 0 {
			target, _ := filepath.EvalSymlinks(p)
			if st.Mode().Perm()&0o022 != 0 || owner != uint32(os.Getuid()) {
				return warnings, fmt.Errorf("outdir: %s is a symlink to %s, a directory other users can write (mode %04o, owner uid %d); make %s a directory of your own", p, target, st.Mode().Perm(), owner, name)
			}
		}
		if perm := st.Mode().Perm(); perm&0o077 != 0 {
			if err := os.Chmod(p, dirMode); err != nil {
				return warnings, fmt.Errorf("outdir: %w", err)
			}
			warnings = append(warnings, fmt.Sprintf("%s was mode %04o, open to other users; made 0700", p, perm))
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return warnings, fmt.Errorf("outdir: %w", err)
		}
		for _, e := range entries {
			if !e.Type().IsRegular() || !isPrivate(name, e.Name()) {
				continue
			}
			info, err := e.Info()
			if err != nil {
				continue
			}
			if perm := info.Mode().Perm(); perm&0o077 != 0 {
				fp := filepath.Join(p, e.Name())
				if err := os.Chmod(fp, 0o600); err != nil {
					return warnings, fmt.Errorf("outdir: %w", err)
				}
				warnings = append(warnings, fmt.Sprintf("%s was mode %04o, readable by other users; made 0600. If anyone else could read it, treat the key as exposed", fp, perm))
			}
		}
	}
	return warnings, nil
}

// isPrivate reports whether a file in one of the PrivateDirs holds a key.
func isPrivate(dir, name string) bool {
	if dir == PKIDir || dir == ClientsDir || dir == KubeDir {
		return strings.HasSuffix(name, "-key.pem")
	}
	if dir == S3Dir {
		return strings.HasSuffix(name, ".env")
	}
	return true
}
