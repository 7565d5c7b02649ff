// Package restore turns a verified snapshot into the plan of a new
// cluster in an output directory: the snapshot copied in, a new cluster
// token, and the old cluster's images and data disks set aside in a dated
// folder. render then writes configs that name the snapshot, and build
// puts it in every image's restore partition.
//
// Nothing is written or moved until the snapshot has passed
// snapshot.Verify; nothing is ever deleted.
package restore

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"etcdimg/ignition/ign"
	"etcdimg/internal/outdir"
	"etcdimg/internal/snapshot"
)

// Files of the output directory this package owns.
const (
	PlanFile     = outdir.RestorePlanFile
	SnapshotFile = outdir.RestoreSnapshotFile
	OldDir       = outdir.OldDir // where earlier clusters' images and disks go
)

// Plan is restore.json: the cluster the directory now builds is a
// restore of this snapshot, under this token.
type Plan struct {
	Token         string    `json:"token"`
	Snapshot      string    `json:"snapshot"` // relative to the directory
	From          string    `json:"from"`     // what the operator named
	SHA256        string    `json:"sha256"`
	Size          int64     `json:"size"`
	Revision      int64     `json:"revision"`
	TotalKeys     int       `json:"totalKeys"`
	SkipHashCheck bool      `json:"skipHashCheck,omitempty"`
	Created       time.Time `json:"created"`
}

// Load returns dir's plan, or nil when the directory's cluster was never
// restored.
func Load(dir outdir.Layout) (*Plan, error) {
	b, err := os.ReadFile(filepath.Join(dir.Dir(), PlanFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	var p Plan
	if err := json.Unmarshal(b, &p); err != nil || p.Token == "" || p.Snapshot == "" || !filepath.IsLocal(p.Snapshot) {
		return nil, fmt.Errorf("restore: %s is damaged (%v); move it aside and run `etcdimg restore` again", filepath.Join(dir.Dir(), PlanFile), err)
	}
	return &p, nil
}

// SnapshotPath is the plan's snapshot inside dir.
func (p *Plan) SnapshotPath(dir outdir.Layout) string { return filepath.Join(dir.Dir(), p.Snapshot) }

// Config is what each member's config says of the snapshot.
func (p *Plan) Config() *ign.RestoreConfig {
	return &ign.RestoreConfig{SHA256: p.SHA256, Size: p.Size, Revision: p.Revision, Keys: p.TotalKeys, SkipHashCheck: p.SkipHashCheck}
}

// Token is a new initial-cluster token for cluster name: the name, the
// day and random bytes, so that it never repeats.
func Token(name string, now time.Time) string {
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("%s-%s-%s", name, now.UTC().Format("20060102"), hex.EncodeToString(b))
}

// Result says what Prepare did.
type Result struct {
	Plan  *Plan
	Info  snapshot.Info
	Moved []string // what was set aside, as paths relative to the directory
	Aside string   // the dated folder they went to
}

// Prepare verifies the snapshot at src and only then makes dir restore
// it: the old cluster's images, data disks and earlier restore are moved
// into OUT/old/<time>/, the snapshot is copied in, and restore.json is
// written with a new token for cluster name. from is how the operator
// named the snapshot.
func Prepare(dir outdir.Layout, name, src, from string, skipHash bool, now time.Time) (*Result, error) {
	info, err := snapshot.Verify(src, skipHash)
	if err != nil {
		return nil, err
	}
	stamp := now.UTC().Format("20060102T150405Z")
	res := &Result{Info: info, Aside: filepath.Join(OldDir, stamp)}
	// The snapshot goes in first, under a temporary name: a failure
	// here leaves the directory's cluster as it was.
	if err := os.MkdirAll(filepath.Join(dir.Dir(), filepath.Dir(SnapshotFile)), 0o700); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	staged, err := stage(src, filepath.Join(dir.Dir(), SnapshotFile))
	if err != nil {
		return nil, err
	}
	defer os.Remove(staged)
	for _, rel := range []string{outdir.ImagesDir, outdir.DisksDirName, PlanFile, SnapshotFile} {
		p := filepath.Join(dir.Dir(), rel)
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		dst := filepath.Join(dir.Dir(), res.Aside, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return res, fmt.Errorf("restore: %w", err)
		}
		if err := os.Rename(p, dst); err != nil {
			return res, fmt.Errorf("restore: set %s aside: %w", rel, err)
		}
		res.Moved = append(res.Moved, rel)
	}
	if err := os.Rename(staged, filepath.Join(dir.Dir(), SnapshotFile)); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	res.Plan = &Plan{
		Token: Token(name, now), Snapshot: SnapshotFile, From: from,
		SHA256: info.SHA256, Size: info.Size, Revision: info.Revision, TotalKeys: info.TotalKeys,
		SkipHashCheck: skipHash || !info.HasHash, Created: now.UTC().Truncate(time.Second),
	}
	b, _ := json.MarshalIndent(res.Plan, "", "  ")
	if _, err := outdir.Write(dir.Dir(), []outdir.File{{Path: PlanFile, Data: append(b, '\n'), Mode: 0o600}}); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	return res, nil
}

// stage copies src beside dst under a temporary name (0600, synced) and
// returns that name.
func stage(src, dst string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("restore: %w", err)
	}
	defer in.Close()
	out, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("restore: %w", err)
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out.Name())
		return "", fmt.Errorf("restore: copy the snapshot in: %w", err)
	}
	return out.Name(), nil
}
