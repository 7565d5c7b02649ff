package snapshot

import (
	"context"
	"errors"
	"etcdimg/internal/etcdtest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// TestRestoreStartsTheClusterItNames: a restored data directory starts a
// real etcd holding the snapshot's keys, with the revision bumped and
// marked compacted, as the cluster whose ID ClusterID predicts.
func TestRestoreStartsTheClusterItNames(t *testing.T) {
	snap := realSnapshot(t)
	cu, pu := freeURL(t), freeURL(t)
	m := Member{Name: "etcd-1", PeerURL: pu.String(), InitialCluster: "etcd-1=" + pu.String(), Token: "restored-1"}
	dataDir := filepath.Join(t.TempDir(), "etcd")
	info, err := Restore(snap, false, m, dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(dataDir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("data dir: %v %v", st, err)
	}
	if _, err := Restore(snap, false, m, dataDir); err == nil || !strings.Contains(err.Error(), "never writes over") {
		t.Fatalf("second restore into the same directory: %v", err)
	}
	want, err := ClusterID(m.Token, m.InitialCluster)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ClusterID("another-token", m.InitialCluster)
	if other == want {
		t.Fatal("two tokens give one cluster ID")
	}

	etcdtest.Start(t, func(cfg *embed.Config) {
		cfg.Name, cfg.Dir = m.Name, dataDir
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfg.InitialCluster, cfg.InitialClusterToken = m.InitialCluster, m.Token
	})
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{cu.String()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := cli.Get(ctx, "/k/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != info.TotalKeys || string(r.Kvs[0].Value) != "v" {
		t.Errorf("restored %d keys, snapshot has %d", len(r.Kvs), info.TotalKeys)
	}
	if r.Header.Revision <= info.Revision+RevisionBump-1 {
		t.Errorf("revision %d, want past %d", r.Header.Revision, info.Revision+RevisionBump)
	}
	if r.Header.ClusterId != want {
		t.Errorf("cluster ID %x, ClusterID says %x", r.Header.ClusterId, want)
	}
	if _, err := cli.Get(ctx, "/k/050", clientv3.WithRev(info.Revision)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Errorf("read at the snapshot's revision: %v, want compacted", err)
	}
}

// TestRestoreRefusesBeforeWriting: a broken snapshot leaves no data
// directory, not even a partial one.
func TestRestoreRefusesBeforeWriting(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.db")
	os.WriteFile(bad, []byte("not a snapshot\n"), 0o600)
	dataDir := filepath.Join(dir, "etcd")
	m := Member{Name: "etcd-1", PeerURL: "http://127.0.0.1:2380", InitialCluster: "etcd-1=http://127.0.0.1:2380", Token: "t"}
	if _, err := Restore(bad, false, m, dataDir); err == nil {
		t.Fatal("a text file restored")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("restore left %d entries", len(entries))
	}
}
