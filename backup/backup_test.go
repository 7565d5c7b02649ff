package backup

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/minio/minio-go/v7"

	"etcdimg/ignition/ign"
	"etcdimg/internal/etcdtest"
	"etcdimg/internal/s3test"
	"etcdimg/snapshot"
)

// startEtcd runs a real etcd (embedded) and returns its client URL.
func startEtcd(t *testing.T) string {
	t.Helper()
	_, u := etcdtest.Start(t, nil)
	return u
}

func service(t *testing.T, name, endpoint string, retain int) *Service {
	return &Service{
		Member: name, Endpoint: endpoint,
		Client: clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()},
		Config: ign.BackupConfig{Cluster: "c1", IntervalSeconds: 60, Retain: retain},
		Dir:    t.TempDir(),
		Log:    t.Logf,
	}
}

// TestOneBackupPerIntervalForTheCluster: two members' services against
// one real etcd take one backup between them per interval; it is
// verified, named in the record, and its metrics pass promtool.
func TestOneBackupPerIntervalForTheCluster(t *testing.T) {
	ep := startEtcd(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	for i := range 50 {
		cli.Put(ctx, fmt.Sprintf("/k/%d", i), "v")
	}
	a, b := service(t, "etcd-1", ep, 2), service(t, "etcd-2", ep, 2)
	for _, s := range []*Service{a, b, a, b} {
		if err := s.Once(ctx); err != nil {
			t.Fatal(err)
		}
	}
	la, _ := List(a.Dir)
	lb, _ := List(b.Dir)
	if len(la)+len(lb) != 1 {
		t.Fatalf("%d + %d backups in one interval, want 1", len(la), len(lb))
	}
	m := append(la, lb...)[0]
	last, err := LastBackup(ctx, cli)
	if err != nil || last == nil || last.Name != m.Name || last.Keys != 51 { // 50 keys and the backup lock
		t.Fatalf("record %+v (%v), backup %+v", last, err, m)
	}
	dir := a.Dir
	if len(lb) == 1 {
		dir = b.Dir
	}
	info, err := snapshot.Verify(filepath.Join(dir, m.Name+".db"), false)
	if err != nil || info.SHA256 != m.SHA256 || info.Revision != m.Revision {
		t.Fatalf("stored backup: %+v %v", info, err)
	}

	// Metrics: every member reports the cluster's last backup.
	var out bytes.Buffer
	b.WriteMetrics(&out, Certificates{})
	if !strings.Contains(out.String(), fmt.Sprintf("etcdimg_backup_last_success_timestamp_seconds %d\n", m.Time.Unix())) ||
		!strings.Contains(out.String(), "etcdimg_backup_last_revision ") {
		t.Errorf("metrics:\n%s", out.String())
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is missing: run `make deps`")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = &out
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, b)
	}
}

// TestRetentionNeverDropsTheNewest: by count and by age, the newest
// verified backup is always kept.
func TestRetentionNeverDropsTheNewest(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	var ms []Manifest
	for i := range 5 {
		ms = append(ms, Manifest{Name: fmt.Sprint(i), Time: now.Add(time.Duration(i-5) * time.Hour)})
	}
	names := func(ms []Manifest) string {
		var s []string
		for _, m := range ms {
			s = append(s, m.Name)
		}
		return strings.Join(s, ",")
	}
	for _, tc := range []struct {
		name   string
		retain int
		maxAge time.Duration
		want   string
	}{
		{"count", 2, 0, "0,1,2"},
		{"count above all", 9, 0, ""},
		{"age", 9, 150 * time.Minute, "0,1,2"},
		{"age drops all but newest", 9, time.Minute, "0,1,2,3"},
		{"count one", 1, 0, "0,1,2,3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := names(Expired(ms, tc.retain, tc.maxAge, now)); got != tc.want {
				t.Errorf("expired %q, want %q", got, tc.want)
			}
		})
	}
}

// TestListSkipsWhatIsNotVerified: a snapshot without its manifest (a
// backup cut short) is not listed, nor is a temporary file.
func TestListSkipsWhatIsNotVerified(t *testing.T) {
	dir := t.TempDir()
	writeManifest(dir, Manifest{Name: "good", Time: time.Now()})
	os.WriteFile(filepath.Join(dir, "good.db"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(dir, "orphan.db"), []byte("x"), 0o600)
	writeManifest(dir, Manifest{Name: "no-db", Time: time.Now()})
	os.WriteFile(filepath.Join(dir, ".snapshot-1.tmp"), []byte("x"), 0o600)
	ms, err := List(dir)
	if err != nil || len(ms) != 1 || ms[0].Name != "good" {
		t.Fatalf("list %+v %v", ms, err)
	}
}

// TestS3StoresVerifiedBackupsWithTheirMetadata: against a real S3 server
// (versitygw), a backup is uploaded with its metadata and manifest,
// listed, fetched byte for byte, and retention in the bucket keeps the
// newest; with the server stopped, an upload fails, is counted, and the
// local copy stays.
func TestS3StoresVerifiedBackupsWithTheirMetadata(t *testing.T) {
	srv := s3test.Start(t, 0)
	srv.MakeBucket(t, "etcd-backups")
	ep := startEtcd(t)
	s := service(t, "etcd-1", ep, 2)
	s.Config.IntervalSeconds = 1
	up, err := NewS3(ign.S3Target{Endpoint: "http://" + srv.Addr, Bucket: "etcd-backups", Prefix: "prod", Region: "us-east-1"}, "c1", s3test.Credentials(), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.S3 = up
	ctx := context.Background()
	for range 3 {
		if err := s.Once(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1100 * time.Millisecond) // names are stamped to the second
	}
	ms, err := up.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	local, _ := List(s.Dir)
	if len(ms) != 2 || len(local) != 2 || ms[1].Name != local[1].Name {
		t.Fatalf("after 3 backups with retain 2: bucket %v, disk %v", ms, local)
	}
	st, err := srv.Client(t).StatObject(ctx, "etcd-backups", "prod/c1/"+ms[1].Name+".db", minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"Sha256": ms[1].SHA256, "Revision": fmt.Sprint(ms[1].Revision), "Cluster-Id": ms[1].ClusterID, "Etcd-Version": ms[1].EtcdVersion} {
		if st.UserMetadata[k] != want {
			t.Errorf("object metadata %s = %q, want %q (all: %v)", k, st.UserMetadata[k], want, st.UserMetadata)
		}
	}
	var buf bytes.Buffer
	if err := up.Get(ctx, ms[1].Name, &buf); err != nil {
		t.Fatal(err)
	}
	disk, _ := os.ReadFile(filepath.Join(s.Dir, ms[1].Name+".db"))
	if !bytes.Equal(buf.Bytes(), disk) {
		t.Error("the bucket's copy differs from the disk's")
	}

	// An upload the bucket does not hold as verified (here: a size
	// that is not the file's) is taken back: no snapshot without its
	// manifest is left for a reader to take for a backup.
	bad := ms[1]
	bad.Name, bad.Size = "c1-bad", bad.Size+1
	if err := up.Put(ctx, filepath.Join(s.Dir, ms[1].Name+".db"), bad); err == nil || !strings.Contains(err.Error(), "check the upload") {
		t.Errorf("a mismatched upload: %v", err)
	}
	for _, key := range []string{"prod/c1/c1-bad.db", "prod/c1/c1-bad.json"} {
		if _, err := srv.Client(t).StatObject(ctx, "etcd-backups", key, minio.StatObjectOptions{}); err == nil {
			t.Errorf("%s is left in the bucket after a failed upload", key)
		}
	}

	// A bucket away (past the S3 client's own retries): counted, and
	// the local copy stays.
	time.Sleep(1100 * time.Millisecond)
	srv.Stop()
	if err := s.Once(ctx); err != nil {
		t.Fatal(err)
	}
	var m bytes.Buffer
	s.WriteMetrics(&m, Certificates{})
	if !strings.Contains(m.String(), `etcdimg_backup_failures_total{target="s3"} 1`) || !strings.Contains(m.String(), `etcdimg_backup_success_total{target="local"} 4`) {
		t.Errorf("metrics after a failed upload:\n%s", m.String())
	}
	if local, _ := List(s.Dir); len(local) != 2 {
		t.Errorf("disk after a failed upload: %v", local)
	}
}

// TestBackupLeavesEtcdItsRoom: a backup that would take the room the
// database may grow into (its quota) is refused, counted, and leaves
// nothing on the disk.
func TestBackupLeavesEtcdItsRoom(t *testing.T) {
	s := service(t, "etcd-1", startEtcd(t), 2)
	s.Quota = 1 << 50
	err := s.Once(context.Background())
	if err == nil || !strings.Contains(err.Error(), "must leave room for the database to grow") {
		t.Fatalf("backup with no room: %v", err)
	}
	if entries, _ := os.ReadDir(s.Dir); len(entries) != 0 {
		t.Errorf("a refused backup left %d files", len(entries))
	}
	var m bytes.Buffer
	s.WriteMetrics(&m, Certificates{})
	if !strings.Contains(m.String(), `etcdimg_backup_failures_total{target="local"} 1`) {
		t.Errorf("failure not counted:\n%s", m.String())
	}
}

// TestARestoredClusterBacksUpAtOnce: a record left by the cluster a
// snapshot came from (another cluster ID) does not delay the restored
// cluster's first backup.
func TestARestoredClusterBacksUpAtOnce(t *testing.T) {
	ep := startEtcd(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	old := fmt.Sprintf(`{"name":"old","clusterID":"deadbeef","time":%q}`, time.Now().Format(time.RFC3339))
	if _, err := cli.Put(context.Background(), RecordKey, old); err != nil {
		t.Fatal(err)
	}
	s := service(t, "etcd-1", ep, 2)
	if err := s.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ms, _ := List(s.Dir); len(ms) != 1 {
		t.Fatalf("backups after a foreign record: %v", ms)
	}
}

// TestS3TrustsTheCAItIsGiven: an HTTPS endpoint signed by a private CA
// is reached with backup.s3.caFile's CA, and refused without it.
func TestS3TrustsTheCAItIsGiven(t *testing.T) {
	srv := s3test.StartTLS(t)
	target := ign.S3Target{Endpoint: "https://" + srv.Addr, Bucket: "tls-backups", Region: "us-east-1"}
	with, err := NewS3(target, "c1", s3test.Credentials(), srv.CAPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := with.client.MakeBucket(context.Background(), "tls-backups", minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("with the CA: %v", err)
	}
	if _, err := with.List(context.Background()); err != nil {
		t.Fatalf("list with the CA: %v", err)
	}
	without, err := NewS3(target, "c1", s3test.Credentials(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := without.List(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without the CA: %v, want a certificate error", err)
	}
}
