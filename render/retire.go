package render

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"etcdimg/outdir"
	"etcdimg/pki"
	"etcdimg/spec"
)

// RetiredDir is where the files of members removed from the spec go,
// under a directory per run named by its time.
const RetiredDir = "retired"

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
			if strings.HasSuffix(name, "-key") || current[name] || name == strings.TrimSuffix(pki.CACertFile, ".pem") || name == strings.TrimSuffix(pki.AdminCert, ".pem") {
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
	dest := filepath.Join(dir.Dir(), RetiredDir, now.UTC().Format("20060102T150405"))
	var moved []string
	for _, name := range slices.Sorted(maps.Keys(gone)) {
		for _, p := range []string{
			dir.PKIFile(pki.MemberCertFile(name)), dir.PKIFile(pki.MemberKeyFile(name)),
			dir.Ignition(name), dir.Butane(name), dir.Image(name),
		} {
			if _, err := os.Lstat(p); err != nil {
				continue
			}
			rel, _ := dir.Rel(p)
			to := filepath.Join(dest, rel)
			if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
				return moved, fmt.Errorf("render: retire %s: %w", rel, err)
			}
			if err := os.Chmod(filepath.Join(dir.Dir(), RetiredDir), 0o700); err != nil {
				return moved, fmt.Errorf("render: retire: %w", err)
			}
			if err := os.Rename(p, to); err != nil {
				return moved, fmt.Errorf("render: retire %s: %w", rel, err)
			}
			moved = append(moved, rel)
		}
	}
	return moved, nil
}
