package datadisk

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"etcdimg/internal/layout"
)

// Marker is the data disk's record of whose it is, at layout.MarkerFile.
type Marker struct {
	Cluster   string `json:"cluster"`
	Member    string `json:"member"`
	ClusterID string `json:"clusterID,omitempty"` // once etcd reported it
	// Refused, once set, is why the disk's etcd data was found damaged
	// (MarkRefused); Member then ends in RefusedSuffix.
	Refused string `json:"refused,omitempty"`
}

// RefusedSuffix ends the member's name in the marker of a disk whose data
// was found damaged: no release, this one or an older one a member falls
// back to, takes the disk as its member's any more (an older release
// refuses it as another member's, nothing on it changed).
const RefusedSuffix = "!damaged"

// hasEtcdData reports whether dir holds an etcd member's data: a WAL.
func hasEtcdData(dir string) bool {
	wals, _ := filepath.Glob(filepath.Join(dir, "member", "wal", "*.wal"))
	return len(wals) > 0
}

// diskPaths are the data disk's files, under the disk's mount point.
type diskPaths struct{ root, dataDir, legacyMemberDir, backupDir, markerFile string }

// onDisk is where layout's files are on a data disk mounted at root.
func onDisk(root string) diskPaths {
	at := func(p string) string { return filepath.Join(root, strings.TrimPrefix(p, layout.DataMount)) }
	return diskPaths{root, at(layout.DataDir), at(layout.LegacyMemberDir), at(layout.BackupDir), at(layout.MarkerFile)}
}

// Owner is the member a data disk is for.
type Owner struct {
	Cluster string // the cluster's token
	Member  string // the member's name
	// Restoring is set when the member's image restores a snapshot,
	// which it does onto a blank disk only.
	Restoring bool
}

// Claim checks that the mounted data disk belongs to this member of
// this cluster and records it if it has no owner yet. Data of another
// cluster or member is refused: etcd never starts on it. The disk comes
// mounted read-only (Prepare) and is made writable only once
// the marker says it is this member's, or that it has no owner yet.
func Claim(o Owner) (hasData bool, m Marker, detail string, err error) {
	return claimDiskAt(onDisk(layout.DataMount), o, func() error { return remountWritable(layout.DataMount) })
}

// claimDiskAt is Claim on the disk at d. It reads the marker before
// anything else and refuses a disk of another owner (or of an owner it
// cannot read) before writable is called or anything on the disk
// changes: a refused disk is left as it was, byte for byte.
func claimDiskAt(d diskPaths, o Owner, writable func() error) (hasData bool, m Marker, detail string, err error) {
	b, err := os.ReadFile(d.markerFile)
	claimed := false
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &m); err != nil {
			return false, m, "", fmt.Errorf("%s is not readable (%v); not starting etcd on a disk of unknown owner (nothing on it was changed)", d.markerFile, err)
		}
		if m.Cluster == o.Cluster && m.Member == o.Member+RefusedSuffix {
			return false, m, "", fmt.Errorf("this disk's etcd data was found damaged (%s); etcd does not start from it, nothing on it was changed. Heal the member from its peers: etcdimg replace %s", m.Refused, o.Member)
		}
		if m.Cluster != o.Cluster || m.Member != o.Member {
			why := fmt.Errorf("the data disk belongs to member %s of cluster %s, not %s of %s: not using it, nothing on it was changed; attach this member's own disk or a blank one", m.Member, m.Cluster, o.Member, o.Cluster)
			if o.Restoring {
				why = fmt.Errorf("%w (this image restores its snapshot onto a blank disk only)", why)
			}
			return false, m, "", why
		}
		detail = fmt.Sprintf("disk of %s/%s", m.Cluster, m.Member)
	case errors.Is(err, fs.ErrNotExist):
		m, claimed = Marker{Cluster: o.Cluster, Member: o.Member}, true
	default:
		return false, m, "", fmt.Errorf("read the marker: %w", err)
	}
	// The disk is this member's, or nobody's yet: from here on it may
	// change.
	if err := writable(); err != nil {
		return false, m, "", fmt.Errorf("make the data disk writable: %w", err)
	}
	if err := os.Chmod(d.root, 0o700); err != nil {
		return false, m, "", err
	}
	moved, err := adoptLegacyLayout(d.legacyMemberDir, d.dataDir)
	if err != nil {
		return false, m, "", fmt.Errorf("move etcd's data into %s: %w", d.dataDir, err)
	}
	if err := os.MkdirAll(d.backupDir, 0o700); err != nil {
		return false, m, "", err
	}
	hasData = hasEtcdData(d.dataDir)
	if claimed {
		if err := writeMarker(d, m); err != nil {
			return false, m, "", fmt.Errorf("write the marker: %w", err)
		}
		detail = "claimed for " + o.Cluster + "/" + o.Member
		if hasData {
			detail += " (etcd data written before disks were marked)"
		}
	}
	if m.ClusterID != "" {
		detail += ", cluster ID " + m.ClusterID
	}
	if moved {
		detail += "; etcd's data moved from the disk's root into " + d.dataDir
	}
	if hasData {
		detail += "; holds etcd data"
	} else {
		detail += "; no etcd data"
	}
	return hasData, m, detail, nil
}

// dataMountFlags are the data disk's mount flags, read-only or not.
const dataMountFlags = unix.MS_NOATIME | unix.MS_NOSUID | unix.MS_NODEV

// remountWritable makes the file system mounted at dir writable.
func remountWritable(dir string) error {
	return unix.Mount("", dir, "", unix.MS_REMOUNT|dataMountFlags, "")
}

// adoptLegacyLayout moves the member directory of a disk written when
// etcd's data directory was the disk's root (legacy) into dataDir, by one
// rename on the same file system: nothing is copied, nothing deleted. A
// disk interrupted between the mkdir and the rename is finished next boot.
func adoptLegacyLayout(legacy, dataDir string) (bool, error) {
	if _, err := os.Stat(legacy); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	target := filepath.Join(dataDir, "member")
	if _, err := os.Stat(target); err == nil {
		return false, fmt.Errorf("both %s and %s exist; not choosing between them: move one aside", legacy, target)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return false, err
	}
	if err := os.Rename(legacy, target); err != nil {
		return false, err
	}
	for _, d := range []string{dataDir, filepath.Dir(legacy)} {
		if f, err := os.Open(d); err == nil {
			f.Sync()
			f.Close()
		}
	}
	return true, nil
}

// writeMarker writes the marker durably: temporary file, sync, rename,
// sync of the directory.
func writeMarker(d diskPaths, m Marker) error {
	b, _ := json.MarshalIndent(m, "", "  ")
	tmp := d.markerFile + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	f, err := os.Open(tmp)
	if err == nil {
		f.Sync()
		f.Close()
	}
	if err := os.Rename(tmp, d.markerFile); err != nil {
		return err
	}
	if dir, err := os.Open(d.root); err == nil {
		dir.Sync()
		dir.Close()
	}
	return nil
}

// RecordClusterID adds the cluster ID etcd reported to the marker of
// the data disk mounted at layout.DataMount.
func RecordClusterID(id string) error {
	b, err := os.ReadFile(layout.MarkerFile)
	if err != nil {
		return err
	}
	var m Marker
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	if m.ClusterID == id {
		return nil
	}
	m.ClusterID = id
	return writeMarker(onDisk(layout.DataMount), m)
}

// MarkRefused records on the marker of the data disk mounted at
// layout.DataMount that its etcd data was found damaged, and why: etcd
// never starts from it again (Claim refuses it).
func MarkRefused(why string) error {
	return markRefusedAt(onDisk(layout.DataMount), why)
}

func markRefusedAt(d diskPaths, why string) error {
	b, err := os.ReadFile(d.markerFile)
	if err != nil {
		return fmt.Errorf("mark the data disk damaged: %w", err)
	}
	var m Marker
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("mark the data disk damaged: %w", err)
	}
	if !strings.HasSuffix(m.Member, RefusedSuffix) {
		m.Member += RefusedSuffix
	}
	m.Refused = why
	if err := writeMarker(d, m); err != nil {
		return fmt.Errorf("mark the data disk damaged: %w", err)
	}
	return nil
}

// QuotaReserve is what the data disk keeps beside the backend at its
// quota: WAL segments, snapshots and their temporary copies.
const QuotaReserve = 512 << 20

// FitQuota returns the backend quota the data disk can hold: the spec's,
// or less when the disk is smaller than the quota plus the reserve, so
// that etcd's own quota alarm always comes before disk-full.
func FitQuota(dir string, quota int64) (int64, int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	total := int64(st.Blocks) * int64(st.Bsize)
	limit := max(total-QuotaReserve, 64<<20)
	return min(quota, limit), total, nil
}
