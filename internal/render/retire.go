package render

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// RetiredDir is where the files of members removed from the spec go,
// under a directory per run named by its time.
const RetiredDir = outdir.RetiredDir

// retire moves the files of members that are no longer in the spec (their
// key and certificate, their configs, their images) into
// DIR/retired/<time>/, 0700, keeping their relative paths: a removed
// member's key is not left among the live ones, and nothing is deleted.
// A member is recognised by its certificate (pki/NAME.pem with CN NAME)
// or its config (ignition/NAME.ign). Data disks are left where `up` keeps
// them. It returns the moved paths, relative to dir.
func retire(c *spec.Cluster, dir outdir.Layout, now time.Time) ([]string, error) {
	current := map[string]bool{}
	for _, m := range c.Members {
		current[m.Name] = true
	}
	gone := map[string]bool{}
	if certs, _ := filepath.Glob(dir.PKIFile("*.pem")); certs != nil {
		for _, p := range certs {
			name := strings.TrimSuffix(filepath.Base(p), ".pem")
			if strings.HasSuffix(name, "-key") || current[name] || name == strings.TrimSuffix(pki.CACertFile, ".pem") || name == strings.TrimSuffix(pki.AdminCert, ".pem") || spec.IsReserved(name) {
				continue
			}
			b, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			if cert, err := pki.ParseCert(b); err == nil && cert.Subject.CommonName == name {
				gone[name] = true
			}
		}
	}
	if cfgs, _ := filepath.Glob(dir.Ignition("*")); cfgs != nil {
		for _, p := range cfgs {
			if name := strings.TrimSuffix(filepath.Base(p), ".ign"); !current[name] {
				gone[name] = true
			}
		}
	}
	if len(gone) == 0 {
		return nil, nil
	}
	var rels []string
	for _, name := range slices.Sorted(maps.Keys(gone)) {
		for _, p := range []string{
			dir.PKIFile(pki.MemberCertFile(name)), dir.PKIFile(pki.MemberKeyFile(name)),
			dir.Ignition(name), dir.Butane(name), dir.Image(name),
		} {
			rel, _ := dir.Rel(p)
			rels = append(rels, rel)
		}
	}
	return MoveToRetired(dir, Stamp(now), rels)
}

// Stamp names the retired/ directory of a run that started at t.
func Stamp(t time.Time) string { return t.UTC().Format("20060102T150405") }

// RetiredPath is dir/retired/stamp, where one run's retired files go.
func RetiredPath(dir outdir.Layout, stamp string) string {
	return filepath.Join(dir.Dir(), RetiredDir, stamp)
}

// MoveToRetired moves each file of rels (paths relative to dir) that
// exists into RetiredPath(dir, stamp), keeping its relative path, the
// directories 0700: nothing retired is deleted, and nothing retired stays
// among the live files. It returns the relative paths it moved.
func MoveToRetired(dir outdir.Layout, stamp string, rels []string) ([]string, error) {
	dest := RetiredPath(dir, stamp)
	var moved []string
	for _, rel := range rels {
		from := filepath.Join(dir.Dir(), rel)
		if _, err := os.Lstat(from); err != nil {
			continue
		}
		// Two runs within one second share a stamp: a file already
		// retired there is never written over.
		to := filepath.Join(dest, rel)
		for i := 1; ; i++ {
			if _, err := os.Lstat(to); errors.Is(err, fs.ErrNotExist) {
				break
			}
			to = fmt.Sprintf("%s.%d", filepath.Join(dest, rel), i)
		}
		if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
			return moved, fmt.Errorf("render: retire %s: %w", rel, err)
		}
		if err := os.Chmod(filepath.Join(dir.Dir(), RetiredDir), 0o700); err != nil {
			return moved, fmt.Errorf("render: retire: %w", err)
		}
		if err := os.Rename(from, to); err != nil {
			return moved, fmt.Errorf("render: retire %s: %w", rel, err)
		}
		moved = append(moved, rel)
	}
	return moved, nil
}
