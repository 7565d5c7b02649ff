package snapshot

import (
	"fmt"
	"os"
	"path/filepath"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.etcd.io/etcd/server/v3/etcdserver/api/membership"
	"go.uber.org/zap"
)

// RevisionBump is how far a restore moves the revision past the
// snapshot's, with that revision marked compacted: etcd's advice for
// restoring under Kubernetes, so that no client's watch or cache can
// mistake the restored keyspace for the one it knew.
const RevisionBump = 1_000_000_000

// Member is one member's part in a restore: what etcdutl snapshot
// restore is given on each host of the runbook.
type Member struct {
	Name           string
	PeerURL        string
	InitialCluster string // name=peerURL,… as ETCD_INITIAL_CLUSTER
	Token          string // ETCD_INITIAL_CLUSTER_TOKEN: new for every restore
}

// ClusterID is the ID etcd gives the cluster that initialCluster starts
// with token, by bootstrap or by restore alike: it depends on nothing
// else, so a member can tell its own cluster from any other before it
// joins.
func ClusterID(token, initialCluster string) (uint64, error) {
	urls, err := types.NewURLsMap(initialCluster)
	if err != nil {
		return 0, fmt.Errorf("snapshot: initial cluster %q: %w", initialCluster, err)
	}
	cl, err := membership.NewClusterFromURLsMap(zap.NewNop(), token, urls)
	if err != nil {
		return 0, fmt.Errorf("snapshot: initial cluster %q: %w", initialCluster, err)
	}
	return uint64(cl.ID()), nil
}

// Restore writes a new data directory at dataDir for member m from the
// snapshot at path, with etcd's own restore code, the revision bumped by
// RevisionBump and marked compacted. The snapshot is verified first;
// dataDir must not exist. The directory is built beside dataDir and
// renamed into place, so a restore cut short leaves no data directory
// etcd could start from.
func Restore(path string, skipHash bool, m Member, dataDir string) (Info, error) {
	info, err := Verify(path, skipHash)
	if err != nil {
		return info, err
	}
	return info, RestoreChecked(path, skipHash || !info.HasHash, m, dataDir)
}

// RestoreChecked is Restore for a file already proven to hold a verified
// snapshot's bytes (its SHA-256 matches the one taken when it was
// verified): it skips Verify's database walk, which costs seconds on a
// large snapshot under emulation. etcd's restore code still checks the
// integrity hash unless skipHash.
func RestoreChecked(path string, skipHash bool, m Member, dataDir string) error {
	if _, err := os.Stat(dataDir); err == nil {
		return fmt.Errorf("snapshot: restore: %s exists; a restore never writes over a data directory", dataDir)
	}
	tmp := dataDir + ".restoring"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("snapshot: restore: %w", err)
	}
	err := snapshot.NewV3(zap.NewNop()).Restore(snapshot.RestoreConfig{
		SnapshotPath:        path,
		Name:                m.Name,
		OutputDataDir:       tmp,
		PeerURLs:            []string{m.PeerURL},
		InitialCluster:      m.InitialCluster,
		InitialClusterToken: m.Token,
		SkipHashCheck:       skipHash,
		RevisionBump:        RevisionBump,
		MarkCompacted:       true,
	})
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("snapshot: restore: %w", err)
	}
	if err := os.Chmod(tmp, 0o700); err != nil {
		return fmt.Errorf("snapshot: restore: %w", err)
	}
	if err := os.Rename(tmp, dataDir); err != nil {
		return fmt.Errorf("snapshot: restore: %w", err)
	}
	if d, err := os.Open(filepath.Dir(dataDir)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
