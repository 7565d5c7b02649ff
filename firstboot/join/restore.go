package join

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"etcdimg/firstboot/datadisk"
	"etcdimg/internal/layout"
	"etcdimg/internal/snapshot"
)

// restoreFromImage starts this member of a restored cluster: it copies
// the snapshot from the boot disk's restore partition onto the data disk,
// checks it against the SHA-256 in the config
// (the bytes `etcdimg restore` verified), and only then lets etcd's
// restore code write the data directory, which must not exist yet. It is called only for a blank data disk.
func (s *Self) restoreFromImage() (string, error) {
	rc := s.Restore
	dev, err := datadisk.WaitForPartition(layout.RestoreLabel)
	if err != nil {
		return "", fmt.Errorf("restore: the config names a snapshot but the boot disk has no %s partition: %w; rebuild the image with `etcdimg restore`", layout.RestoreLabel, err)
	}
	copyPath := filepath.Join(layout.DataMount, "restore-snapshot.db")
	defer os.Remove(copyPath)
	if err := copySnapshot(dev, copyPath, rc.Size, rc.SHA256); err != nil {
		return "", fmt.Errorf("restore: %w", err)
	}
	// The bytes are the ones `etcdimg restore` verified (same SHA-256):
	// etcd's restore code checks its integrity hash again as it writes.
	err = snapshot.RestoreChecked(copyPath, rc.SkipHashCheck, snapshot.Member{
		Name: s.Name, PeerURL: s.PeerURL, InitialCluster: s.InitialCluster, Token: s.Cluster,
	}, layout.DataDir)
	if err != nil {
		return "", fmt.Errorf("restore: %w", err)
	}
	return fmt.Sprintf("restored %d keys at revision %d (bumped by %d, marked compacted) from the image's snapshot %.12s…", rc.Keys, rc.Revision, snapshot.RevisionBump, rc.SHA256), nil
}

// copySnapshot copies the first size bytes of dev to path (0600),
// hashing them on the way, and fails unless they hash to want.
func copySnapshot(dev, path string, size int64, want string) error {
	in, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), io.LimitReader(in, size))
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy the snapshot from %s: %w", dev, err)
	}
	if n != size {
		return fmt.Errorf("%s holds %d bytes, the config names a %d-byte snapshot; the image is damaged: rebuild it", dev, n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("the snapshot on %s has SHA-256 %.12s…, the config names %.12s…; the image is damaged: rebuild it", dev, got, want)
	}
	return nil
}
