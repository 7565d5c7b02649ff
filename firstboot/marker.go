package firstboot

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"etcdimg/layout"
)

// marker is the data disk's record of whose it is, at layout.MarkerFile.
type marker struct {
	Cluster   string `json:"cluster"`
	Member    string `json:"member"`
	ClusterID string `json:"clusterID,omitempty"` // once etcd reported it
}

// hasEtcdData reports whether dir holds an etcd member's data: a WAL.
func hasEtcdData(dir string) bool {
	wals, _ := filepath.Glob(filepath.Join(dir, "member", "wal", "*.wal"))
	return len(wals) > 0
}

// claimDisk checks that the mounted data disk belongs to this member of
// this cluster and records it if it has no owner yet. Data of another
// cluster or member is refused: etcd never starts on it.
func claimDisk(s *self) (hasData bool, m marker, detail string, err error) {
	moved, err := adoptLegacyLayout(layout.LegacyMemberDir, layout.DataDir)
	if err != nil {
		return false, m, "", fmt.Errorf("move etcd's data into %s: %w", layout.DataDir, err)
	}
	if err := os.MkdirAll(layout.BackupDir, 0o700); err != nil {
		return false, m, "", err
	}
	hasData = hasEtcdData(layout.DataDir)
	b, err := os.ReadFile(layout.MarkerFile)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &m); err != nil {
			return false, m, "", fmt.Errorf("%s is not readable (%v); not starting etcd on a disk of unknown owner", layout.MarkerFile, err)
		}
		if m.Cluster != s.Cluster || m.Member != s.Name {
			why := fmt.Errorf("the data disk belongs to member %s of cluster %s, not %s of %s: not using it; attach this member's own disk or a blank one", m.Member, m.Cluster, s.Name, s.Cluster)
			if s.Restore != nil {
				why = fmt.Errorf("%w (this image restores its snapshot onto a blank disk only; nothing on this disk was changed)", why)
			}
			return false, m, "", why
		}
		detail = fmt.Sprintf("disk of %s/%s", m.Cluster, m.Member)
	case errors.Is(err, fs.ErrNotExist):
		m = marker{Cluster: s.Cluster, Member: s.Name}
		if err := writeMarker(m); err != nil {
			return false, m, "", err
		}
		detail = "claimed for " + s.Cluster + "/" + s.Name
		if hasData {
			detail += " (etcd data written before disks were marked)"
		}
	default:
		return false, m, "", err
	}
	if m.ClusterID != "" {
		detail += ", cluster ID " + m.ClusterID
	}
	if moved {
		detail += "; etcd's data moved from the disk's root into " + layout.DataDir
	}
	if hasData {
		detail += "; holds etcd data"
	} else {
		detail += "; no etcd data"
	}
	return hasData, m, detail, nil
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
func writeMarker(m marker) error {
	b, _ := json.MarshalIndent(m, "", "  ")
	tmp := layout.MarkerFile + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	f, err := os.Open(tmp)
	if err == nil {
		f.Sync()
		f.Close()
	}
	if err := os.Rename(tmp, layout.MarkerFile); err != nil {
		return err
	}
	if d, err := os.Open(layout.DataMount); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// recordClusterID adds the cluster ID etcd reported to the marker.
func recordClusterID(id string) error {
	b, err := os.ReadFile(layout.MarkerFile)
	if err != nil {
		return err
	}
	var m marker
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	if m.ClusterID == id {
		return nil
	}
	m.ClusterID = id
	return writeMarker(m)
}

// quotaReserve is what the data disk keeps beside the backend at its
// quota: WAL segments, snapshots and their temporary copies.
const quotaReserve = 512 << 20

// fitQuota returns the backend quota the data disk can hold: the spec's,
// or less when the disk is smaller than the quota plus the reserve, so
// that etcd's own quota alarm always comes before disk-full.
func fitQuota(dir string, quota int64) (int64, int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	total := int64(st.Blocks) * int64(st.Bsize)
	limit := max(total-quotaReserve, 64<<20)
	return min(quota, limit), total, nil
}

// writeRuntimeEnv writes etcd.service's environment overrides.
func writeRuntimeEnv(vars []string) error {
	if err := os.MkdirAll(filepath.Dir(layout.RuntimeEnvPath), 0o755); err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("# Written by firstboot at boot; overrides /etc/etcd/etcd.conf.\n")
	for _, kv := range vars {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&b, "%s=%q\n", k, v)
	}
	return os.WriteFile(layout.RuntimeEnvPath, []byte(b.String()), 0o644)
}
