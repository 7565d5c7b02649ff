package chaos

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// The variants of the upgrade fault: every member upgraded over the
// network to images of a changed spec (each reboots into a new slot and
// marks it good, followers first, the leader last), or one member sent
// another cluster's image, which it must refuse before any reboot.
const (
	GoodUpgrade    = "good"
	ForeignUpgrade = "foreign"
)

// NeedsUpgradeImages reports whether plan upgrades members: their new
// images are built, before any fault, into UpgradeDirs.
func NeedsUpgradeImages(plan []Fault) bool {
	for _, f := range plan {
		if f.Kind == Upgrade {
			return true
		}
	}
	return false
}

// UpgradeDirs writes, under runDir, the output directories the upgrade
// fault's images are built in, each with the spec to build them from
// (its etcdimg.yaml) and dir's PKI (the same CA and image-signing key):
//
//   - good: c with upgrade.goodAfter moved by 1 to 5 s (from seed), and
//     dir's cluster record: every member's config differs from the one
//     it runs, so its slot does, and the images belong to the cluster.
//   - foreign: c as it is, without the record: render gives the
//     directory a new token, so another cluster's ID. Its images are
//     signed with the right key and must be refused all the same.
func UpgradeDirs(c *spec.Cluster, dir outdir.Layout, runDir string, seed uint64) (good, foreign outdir.Layout, err error) {
	good, foreign = outdir.Layout(filepath.Join(runDir, "upgrade-good")), outdir.Layout(filepath.Join(runDir, "upgrade-foreign"))
	changed := *c
	changed.Upgrade.GoodAfter = spec.Duration(c.Upgrade.GoodAfter.D() + time.Duration(1+seed%5)*time.Second)
	if changed.Upgrade.GoodAfter >= changed.Upgrade.TrialTimeout {
		changed.Upgrade.GoodAfter = spec.Duration(c.Upgrade.GoodAfter.D() - time.Second)
	}
	for _, d := range []struct {
		dir    outdir.Layout
		c      *spec.Cluster
		record bool
	}{{good, &changed, true}, {foreign, c, false}} {
		if err := copyTree(dir.PKI(), d.dir.PKI()); err != nil {
			return "", "", fmt.Errorf("chaos: %w", err)
		}
		raw, err := spec.Marshal(d.c)
		if err != nil {
			return "", "", err
		}
		if err := os.WriteFile(d.dir.Spec(), raw, 0o644); err != nil {
			return "", "", fmt.Errorf("chaos: %w", err)
		}
		if d.record {
			b, err := os.ReadFile(dir.ClusterRecord())
			if err != nil {
				return "", "", fmt.Errorf("chaos: %w", err)
			}
			if err := os.WriteFile(d.dir.ClusterRecord(), b, 0o644); err != nil {
				return "", "", fmt.Errorf("chaos: %w", err)
			}
		}
	}
	return good, foreign, nil
}

// copyTree copies the regular files under from into to, with their
// modes (keys stay 0600).
func copyTree(from, to string) error {
	return filepath.WalkDir(from, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if de.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		if !de.Type().IsRegular() {
			return nil
		}
		info, err := de.Info()
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, info.Mode().Perm())
		if err != nil {
			return err
		}
		_, err = f.Write(b)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	})
}

// DropSigningKeys removes, from a directory UpgradeDirs wrote, the copies
// of the keys that sign (the CA's, a rotation's next CA's, the
// image-signing key) once its images are built: a chaos run's files
// should not keep signing material the output directory may rotate away.
func DropSigningKeys(d outdir.Layout) error {
	var errs []error
	for _, p := range []string{d.PKIFile(pki.CAKeyFile), d.PKIFile(filepath.Join(pki.NextDir, pki.CAKeyFile)), d.PKIFile(pki.ImageSigningKey)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
