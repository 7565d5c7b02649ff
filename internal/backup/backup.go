// Package backup is what the operator's machine and the appliance share
// about backups: the manifest that describes one verified backup, the
// cluster's record and lock in etcd, a backups directory's listing
// (List, Open), retention's rules (Own, Expired), the S3 store, and the
// path of the members' backups API. The on-node service that takes the
// backups and serves them is firstboot/backupd; cluster/ and cmd/etcdimg
// read what it wrote through this package.
package backup

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// APIPrefix is where a member serves its backups over mTLS on
// layout.BackupPort: GET APIPrefix lists them (JSON manifests), GET
// APIPrefix+NAME sends one.
const APIPrefix = "/etcdimg/v1/backups/"

// Keys the backup service keeps in etcd.
const (
	LockKey   = "/etcdimg/backup/lock"
	RecordKey = "/etcdimg/backup/last"
	// IncarnationKey holds a random value the cluster writes once, at
	// its first backup: it tells this cluster's backups from those of
	// another bootstrapped with the same ID (Own).
	IncarnationKey = "/etcdimg/backup/incarnation"
)

// MaxSkew is how far apart two clocks may be and still agree: a record
// dated later than this after the member's clock is from the future,
// and age-based retention needs the member's clock within it of the S3
// server's.
const MaxSkew = 5 * time.Minute

// Manifest describes one verified backup. It sits beside the snapshot
// on the data disk (NAME.json) and in the bucket, and the newest one is
// the cluster's record at RecordKey.
type Manifest struct {
	Name        string    `json:"name"`
	Cluster     string    `json:"cluster"`
	ClusterID   string    `json:"clusterID"`
	Member      string    `json:"member"`
	Time        time.Time `json:"time"`
	Revision    int64     `json:"revision"`
	Keys        int       `json:"keys"`
	Size        int64     `json:"size"`
	SHA256      string    `json:"sha256"`
	EtcdVersion string    `json:"etcdVersion"`
	Seconds     float64   `json:"seconds"` // to save and verify
	// Incarnation is the cluster's random value at IncarnationKey (see
	// Own): with ClusterID, which cluster wrote the backup.
	Incarnation string   `json:"incarnation,omitempty"`
	Targets     []string `json:"targets"` // where it was stored: local, s3
}

// readRecord reads the cluster's last backup record. A record of
// another cluster (one this cluster was restored from) does not count:
// a restored cluster backs itself up at once.
func readRecord(ctx context.Context, cli *clientv3.Client) (*Manifest, error) {
	r, err := cli.Get(ctx, RecordKey)
	if err != nil {
		return nil, err
	}
	if len(r.Kvs) == 0 {
		return nil, nil
	}
	var m Manifest
	if err := json.Unmarshal(r.Kvs[0].Value, &m); err != nil {
		return nil, nil // a damaged record is overwritten by the next backup
	}
	if m.ClusterID != fmt.Sprintf("%x", r.Header.ClusterId) {
		return nil, nil
	}
	return &m, nil
}

// LastBackup reads the cluster's last backup record, or nil.
func LastBackup(ctx context.Context, cli *clientv3.Client) (*Manifest, error) {
	return readRecord(ctx, cli)
}

// WriteManifest writes m into dir as NAME.json (through a temporary
// file and a rename), the mark that makes NAME.db a verified backup
// (List).
func WriteManifest(dir string, m Manifest) error {
	b, _ := json.MarshalIndent(m, "", "  ")
	tmp := filepath.Join(dir, "."+m.Name+".json.tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, m.Name+".json"))
}

// List returns the verified backups in dir, oldest first: those with a
// manifest beside their snapshot.
func List(dir string) ([]Manifest, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []Manifest
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var m Manifest
		if json.Unmarshal(b, &m) != nil || m.Name+".json" != filepath.Base(p) {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, m.Name+".db")); err != nil {
			continue
		}
		out = append(out, m)
	}
	sortManifests(out)
	return out, nil
}

func sortManifests(ms []Manifest) {
	slices.SortFunc(ms, func(a, b Manifest) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
}

// Own picks, from ms, the backups of the cluster with ID clusterID, and
// orders them by revision, oldest first: revisions only grow within a
// cluster, whatever the clocks of the members that took them say.
// Retention looks at these only: a cluster never deletes a backup it
// did not write.
//
// A cluster ID alone does not tell two clusters apart when both were
// bootstrapped with the same token and members (the data disks of one
// output directory wiped and the cluster started again, or clusters of
// an older etcdimg made from one spec): incarnation, a random value the
// cluster keeps at IncarnationKey from its first backup, does. A backup
// of another incarnation (or one taken before incarnations were kept)
// is not this cluster's to delete.
func Own(ms []Manifest, clusterID, incarnation string) []Manifest {
	var out []Manifest
	for _, m := range ms {
		if clusterID != "" && m.ClusterID == clusterID && m.Incarnation == incarnation {
			out = append(out, m)
		}
	}
	slices.SortStableFunc(out, func(a, b Manifest) int {
		if a.Revision != b.Revision {
			return cmp.Compare(a.Revision, b.Revision)
		}
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// Expired picks, from one cluster's backups ordered oldest first (see
// Own), those retention drops: all but the newest retain, and the oldest
// ones while they are older than maxAge (0: no limit by age). The
// victims are always the oldest; the newest is never among them, and no
// backup goes for its age while an older one stays.
func Expired(ms []Manifest, retain int, maxAge time.Duration, now time.Time) []Manifest {
	var out []Manifest
	aged := maxAge > 0
	for i, m := range ms {
		if i == len(ms)-1 {
			break
		}
		aged = aged && now.Sub(m.Time) > maxAge
		if len(ms)-i > max(retain, 1) || aged {
			out = append(out, m)
		}
	}
	return out
}

// Open returns the snapshot of the backup called name in dir.
func Open(dir, name string) (*os.File, Manifest, error) {
	ms, err := List(dir)
	if err != nil {
		return nil, Manifest{}, err
	}
	for _, m := range ms {
		if m.Name == name {
			f, err := os.Open(filepath.Join(dir, m.Name+".db"))
			return f, m, err
		}
	}
	return nil, Manifest{}, fmt.Errorf("no backup %q", name)
}
