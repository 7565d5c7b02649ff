package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	csnap "go.etcd.io/etcd/client/v3/snapshot"
	"go.uber.org/zap"

	"etcdimg/internal/snapshot"
)

// SavedSnapshot is a snapshot taken and verified.
type SavedSnapshot struct {
	snapshot.Info
	Member string // the member it was taken from
	URL    string
	Took   time.Duration
}

// SaveSnapshot takes a snapshot from the healthiest member (answering,
// furthest applied; a follower before the leader on a tie), verifies it,
// and only then puts it at path. path must not exist: nothing is
// overwritten, and a failed or unverifiable snapshot leaves nothing.
func (e *Etcd) SaveSnapshot(ctx context.Context, path string) (*SavedSnapshot, error) {
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("snapshot save: %s exists; pick a new name or move it away", path)
	}
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("snapshot save: directory %s does not exist", dir)
	}
	var best *MemberStatus
	for _, st := range e.Statuses(ctx, 5*time.Second) {
		if st.Err != nil || st.IsLearner || st.Leader == 0 {
			continue
		}
		if best == nil || st.Applied > best.Applied || (st.Applied == best.Applied && best.ID == best.Leader && st.ID != st.Leader) {
			best = &st
		}
	}
	if best == nil {
		return nil, errors.New("snapshot save: no member answers with a leader; check `etcdimg health`")
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("snapshot save: %w", err)
	}
	tmpPath := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpPath)
	start := time.Now()
	cfg := clientv3.Config{Endpoints: []string{best.URL}, TLS: e.TLS, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if _, err := csnap.SaveWithVersion(ctx, zap.NewNop(), cfg, tmpPath); err != nil {
		return nil, fmt.Errorf("snapshot save from %s: %w", best.Name, err)
	}
	took := time.Since(start)
	info, err := snapshot.Verify(tmpPath, false)
	if err != nil {
		return nil, fmt.Errorf("snapshot save from %s: the snapshot does not verify, not kept: %w", best.Name, err)
	}
	// A hard link is a rename that never replaces: if path appeared
	// meanwhile, it is left alone.
	if err := os.Link(tmpPath, path); err != nil {
		return nil, fmt.Errorf("snapshot save: %w", err)
	}
	info.Path = path
	return &SavedSnapshot{Info: info, Member: best.Name, URL: best.URL, Took: took}, nil
}
