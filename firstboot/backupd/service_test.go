package backupd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/minio/minio-go/v7"

	"etcdimg/ignition/ign"
	"etcdimg/internal/backup"
	"etcdimg/internal/etcdtest"
	"etcdimg/internal/s3test"
	"etcdimg/internal/snapshot"
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
	la, _ := backup.List(a.Dir)
	lb, _ := backup.List(b.Dir)
	if len(la)+len(lb) != 1 {
		t.Fatalf("%d + %d backups in one interval, want 1", len(la), len(lb))
	}
	m := append(la, lb...)[0]
	last, err := backup.LastBackup(ctx, cli)
	if err != nil || last == nil || last.Name != m.Name || last.Keys != 52 { // 50 keys, the backup lock and the incarnation
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
	up, err := backup.NewS3(ign.S3Target{Endpoint: "http://" + srv.Addr, Bucket: "etcd-backups", Prefix: "prod", Region: "us-east-1"}, "c1", s3test.Credentials(), nil)
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
	local, _ := backup.List(s.Dir)
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
	if local, _ := backup.List(s.Dir); len(local) != 2 {
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
	if _, err := cli.Put(context.Background(), backup.RecordKey, old); err != nil {
		t.Fatal(err)
	}
	s := service(t, "etcd-1", ep, 2)
	if err := s.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ms, _ := backup.List(s.Dir); len(ms) != 1 {
		t.Fatalf("backups after a foreign record: %v", ms)
	}
}

// clusterID is the real etcd's cluster ID, as the backups name it.
func clusterID(t *testing.T, cli *clientv3.Client) string {
	t.Helper()
	r, err := cli.Get(context.Background(), "/")
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", r.Header.ClusterId)
}

// seed stores m as a verified backup (a small snapshot file and its
// manifest) on s's data disk and, when up is set, in the bucket.
func seed(t *testing.T, s *Service, up *backup.S3, m backup.Manifest) {
	t.Helper()
	data := []byte("snapshot of " + m.Name)
	m.Size, m.SHA256 = int64(len(data)), fmt.Sprintf("%064x", len(data))
	path := filepath.Join(s.Dir, m.Name+".db")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := backup.WriteManifest(s.Dir, m); err != nil {
		t.Fatal(err)
	}
	if up != nil {
		if err := up.Put(context.Background(), path, m); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAFutureRecordDoesNotStopBackups: a record dated after this
// member's clock (a member whose clock runs ahead wrote it, or a client
// allowed under /etcdimg/) does not count beyond a small skew: the
// member backs up anyway, counts it and says so; a record a little
// ahead (within the skew) still counts as the last backup.
func TestAFutureRecordDoesNotStopBackups(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ahead   time.Duration
		backups int
		counted string
	}{
		{"a year ahead", 365 * 24 * time.Hour, 1, "etcdimg_backup_future_records_total 1\n"},
		{"an hour ahead", time.Hour, 1, "etcdimg_backup_future_records_total 1\n"},
		{"a minute ahead, within the skew", time.Minute, 0, "etcdimg_backup_future_records_total 0\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep := startEtcd(t)
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, Logger: zap.NewNop()})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			rec := fmt.Sprintf(`{"name":"c1-future","clusterID":%q,"member":"etcd-9","time":%q}`, clusterID(t, cli), time.Now().Add(tc.ahead).Format(time.RFC3339))
			if _, err := cli.Put(context.Background(), backup.RecordKey, rec); err != nil {
				t.Fatal(err)
			}
			s := service(t, "etcd-1", ep, 2)
			var logged []string
			s.Log = func(f string, a ...any) { logged = append(logged, fmt.Sprintf(f, a...)) }
			for range 3 {
				if err := s.Once(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			ms, _ := backup.List(s.Dir)
			if len(ms) != tc.backups {
				t.Fatalf("%d backups in 3 rounds after a record dated %s ahead, want %d", len(ms), tc.ahead, tc.backups)
			}
			var out bytes.Buffer
			s.WriteMetrics(&out, Certificates{})
			if !strings.Contains(out.String(), tc.counted) {
				t.Errorf("metrics, want %q:\n%s", tc.counted, out.String())
			}
			said := strings.Join(logged, "\n")
			if tc.backups == 1 && !strings.Contains(said, "c1-future") {
				t.Errorf("the record from the future is not in the log:\n%s", said)
			}
			if tc.backups == 1 {
				// The member reports its own backup, not the record
				// from the future, as the cluster's last.
				if strings.Contains(out.String(), fmt.Sprintf("etcdimg_backup_last_success_timestamp_seconds %d\n", time.Now().Add(tc.ahead).Unix())) {
					t.Errorf("the record from the future is reported as the last backup:\n%s", out.String())
				}
			}
		})
	}
}

// TestAgeRetentionDistrustsAWrongClock: a member whose clock disagrees
// with the cluster's last record (here: it is 31 days past a record of
// an hour ago, as a clock 31 days ahead sees it) or with the S3
// server's takes its backup but deletes none by age, on its disk or in
// the bucket; count-based retention still runs. With a clock that
// agrees, age-based retention drops the old backups, oldest first.
func TestAgeRetentionDistrustsAWrongClock(t *testing.T) {
	srv := s3test.Start(t, 0)
	ep := startEtcd(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for i := range 40 { // the real backups' revisions pass the seeded ones'
		cli.Put(context.Background(), fmt.Sprintf("/k/%d", i), "v")
	}
	id := clusterID(t, cli)
	const day = 24 * time.Hour
	for _, tc := range []struct {
		name string
		// ages of the 24 seeded backups, oldest first, by the clock of
		// the member that runs the round; the newest is the record.
		age      func(i int) time.Duration
		skew     time.Duration // of this member's clock
		disk, s3 int           // backups left after the round (24 seeded + 1)
	}{
		// A clock 31 days ahead: the record, an hour old, looks 31 days
		// and an hour old.
		{"clock 31 days past the record", func(i int) time.Duration { return 31*day + time.Duration(24-i)*time.Hour }, 0, 24, 24},
		// A clock 31 days ahead that wrote the record itself an hour
		// ago: the record agrees, the S3 server's Date does not.
		{"clock 31 days ahead of the S3 server", func(i int) time.Duration {
			if i == 23 {
				return time.Hour
			}
			return 31*day + time.Duration(24-i)*time.Hour
		}, 31 * day, 24, 24},
		// A clock that agrees: 12 backups are past maxAge, 12 are not.
		{"clock agrees", func(i int) time.Duration {
			if i < 12 {
				return 40*day - time.Duration(i)*time.Hour
			}
			return time.Duration(24-i) * time.Hour
		}, 0, 13, 13},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bucket := strings.ReplaceAll(strings.ToLower(tc.name), " ", "-")
			srv.MakeBucket(t, bucket)
			s := service(t, "etcd-1", ep, 24)
			s.Config.IntervalSeconds, s.Config.MaxAgeSeconds = 3600, 720*3600
			up, err := backup.NewS3(ign.S3Target{Endpoint: "http://" + srv.Addr, Bucket: bucket, Region: "us-east-1"}, "c1", s3test.Credentials(), nil)
			if err != nil {
				t.Fatal(err)
			}
			s.S3 = up
			s.clock = func() time.Time { return time.Now().Add(tc.skew) }
			now := s.now()
			inc, err := incarnation(context.Background(), cli)
			if err != nil {
				t.Fatal(err)
			}
			var last backup.Manifest
			for i := range 24 {
				last = backup.Manifest{Name: fmt.Sprintf("c1-seed-%02d", i), Cluster: "c1", ClusterID: id, Incarnation: inc, Member: "etcd-2", Time: now.Add(-tc.age(i)).UTC(), Revision: int64(i + 1)}
				seed(t, s, up, last)
			}
			b, _ := json.Marshal(last)
			if _, err := cli.Put(context.Background(), backup.RecordKey, string(b)); err != nil {
				t.Fatal(err)
			}
			if err := s.Once(context.Background()); err != nil {
				t.Fatal(err)
			}
			disk, _ := backup.List(s.Dir)
			inS3, err := up.List(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(disk) != tc.disk || len(inS3) != tc.s3 {
				t.Fatalf("retain 24, maxAge 720h: %d backups left on the disk and %d in the bucket, want %d and %d", len(disk), len(inS3), tc.disk, tc.s3)
			}
			if disk[0].Name == "c1-seed-00" || inS3[0].Name == "c1-seed-00" {
				t.Errorf("the oldest backup is kept: disk %s, bucket %s", disk[0].Name, inS3[0].Name)
			}
			server, err := up.ServerTime(context.Background())
			if d := time.Since(server); err != nil || d > 5*time.Second || d < -5*time.Second {
				t.Errorf("the S3 server's time: %v (%v), %s off this machine's", server, err, d)
			}
		})
	}
}

// TestRetentionKeepsAnotherClustersBackups: a bucket path (and a data
// disk) shared with another cluster of the same name holds its
// backups; this cluster's retention deletes only its own.
func TestRetentionKeepsAnotherClustersBackups(t *testing.T) {
	srv := s3test.Start(t, 0)
	srv.MakeBucket(t, "shared")
	ep := startEtcd(t)
	s := service(t, "etcd-1", ep, 2)
	s.Config.IntervalSeconds = 1
	up, err := backup.NewS3(ign.S3Target{Endpoint: "http://" + srv.Addr, Bucket: "shared", Prefix: "prod", Region: "us-east-1"}, "c1", s3test.Credentials(), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.S3 = up
	now := time.Now()
	for i := range 24 {
		seed(t, s, up, backup.Manifest{Name: fmt.Sprintf("c1-other-%02d", i), Cluster: "c1", ClusterID: "deadbeef", Member: "etcd-1", Time: now.Add(time.Duration(i-24) * time.Hour).UTC(), Revision: int64(1000 + i)})
	}
	for range 3 {
		if err := s.Once(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1100 * time.Millisecond) // names are stamped to the second
	}
	for _, tc := range []struct {
		where string
		list  func() ([]backup.Manifest, error)
	}{
		{"the bucket", func() ([]backup.Manifest, error) { return up.List(context.Background()) }},
		{"the data disk", func() ([]backup.Manifest, error) { return backup.List(s.Dir) }},
	} {
		t.Run(tc.where, func(t *testing.T) {
			ms, err := tc.list()
			if err != nil {
				t.Fatal(err)
			}
			theirs, ours := 0, 0
			for _, m := range ms {
				if m.ClusterID == "deadbeef" {
					theirs++
				} else {
					ours++
				}
			}
			if theirs != 24 || ours != 2 {
				t.Fatalf("%s holds %d of the other cluster's 24 backups and %d of ours (retain 2)", tc.where, theirs, ours)
			}
		})
	}
	// An upload under a name the other cluster took is refused, and
	// leaves the other's snapshot and manifest in place.
	mine := backup.Manifest{Name: "c1-other-05", Cluster: "c1", ClusterID: "cafe", Size: 1, SHA256: "x"}
	path := filepath.Join(t.TempDir(), "x.db")
	os.WriteFile(path, []byte("x"), 0o600)
	if err := up.Put(context.Background(), path, mine); err == nil || !strings.Contains(err.Error(), "not overwritten") {
		t.Errorf("an upload over the other cluster's backup: %v", err)
	}
	if err := up.Delete(context.Background(), mine); err == nil {
		t.Error("deleted the other cluster's backup by name")
	}
	ms, _ := up.List(context.Background())
	if n := len(backup.Own(ms, "deadbeef", "")); n != 24 {
		t.Errorf("the other cluster has %d backups left, want 24", n)
	}
}

// TestClockDoubt: age-based retention trusts this member's clock only
// when the cluster's last record and the S3 server's clock agree with
// it.
func TestClockDoubt(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	rec := func(age time.Duration) *backup.Manifest {
		return &backup.Manifest{Name: "r", Member: "etcd-2", Time: now.Add(-age)}
	}
	for _, tc := range []struct {
		name      string
		prev      *backup.Manifest
		haveS3    bool
		server    time.Time
		serverErr error
		want      string
	}{
		{"record of an interval ago", rec(time.Hour), false, time.Time{}, nil, ""},
		{"record and S3 agree", rec(time.Hour), true, now.Add(-30 * time.Second), nil, ""},
		{"record a little ahead", rec(-time.Minute), true, now, nil, ""},
		{"no record, S3 agrees", nil, true, now, nil, ""},
		{"no record, no S3", nil, false, time.Time{}, nil, "alone"},
		{"record from the future", rec(-time.Hour), false, time.Time{}, nil, "record-ahead"},
		{"record 31 days behind", rec(31 * 24 * time.Hour), true, now, nil, "record-behind"},
		{"record of two intervals ago", rec(2 * time.Hour), false, time.Time{}, nil, ""},
		{"record of three intervals ago", rec(3 * time.Hour), false, time.Time{}, nil, "record-behind"},
		{"S3 31 days behind", rec(time.Hour), true, now.Add(-31 * 24 * time.Hour), nil, "s3-ahead"},
		{"S3 an hour ahead", rec(time.Hour), true, now.Add(time.Hour), nil, "s3-behind"},
		{"S3 unreachable", rec(time.Hour), true, time.Time{}, fmt.Errorf("connection refused"), "s3-unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kind, why := clockDoubt(now, tc.prev, time.Hour, tc.haveS3, tc.server, tc.serverErr)
			if kind != tc.want || (kind == "") != (why == "") {
				t.Errorf("doubt %q (%s), want %q", kind, why, tc.want)
			}
		})
	}
}

// TestAClockAMonthOffDoesNotBackUpAtEveryTick: one member's clock runs
// 31 days ahead of the other's. With records aged by their dates, each
// found the other's record an interval old (or from the future) and the
// two backed up at every round, so retention by count dropped every
// older restore point within minutes. How long a record has stood is now
// measured on each member's own clock: 8 rounds in ~9 s with a 60 s
// interval take at most two backups (the first record each member sees
// is aged once by its date).
func TestAClockAMonthOffDoesNotBackUpAtEveryTick(t *testing.T) {
	ep := startEtcd(t)
	a, b := service(t, "etcd-1", ep, 3), service(t, "etcd-2", ep, 3)
	a.clock = func() time.Time { return time.Now().Add(31 * 24 * time.Hour) }
	ctx := context.Background()
	names := map[string]bool{}
	for i := range 8 {
		s := []*Service{a, b}[i%2]
		if err := s.Once(ctx); err != nil {
			t.Fatal(err)
		}
		ma, _ := backup.List(a.Dir)
		mb, _ := backup.List(b.Dir)
		for _, m := range append(ma, mb...) {
			names[m.Name] = true
		}
		time.Sleep(1100 * time.Millisecond) // names are to the second
	}
	if len(names) > 2 {
		t.Errorf("%d backups in 8 rounds (~9 s) with a 60 s interval: the two clocks overrule each other", len(names))
	}
}

// TestTheBackupJustTakenIsNeverRetentionsVictim: clusters made by an
// older etcdimg from one spec share a cluster ID (the token was the
// name). Another such cluster's 24 backups, at revisions far above
// ours, sat in the shared path; with retain 24, retention ordered by
// revision deleted the backup this round had just verified and
// uploaded. It is never a victim.
func TestTheBackupJustTakenIsNeverRetentionsVictim(t *testing.T) {
	srv := s3test.Start(t, 0)
	srv.MakeBucket(t, "shared")
	ep := startEtcd(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	id := clusterID(t, cli)
	s := service(t, "etcd-1", ep, 24)
	up, err := backup.NewS3(ign.S3Target{Endpoint: "http://" + srv.Addr, Bucket: "shared", Prefix: "prod", Region: "us-east-1"}, "c1", s3test.Credentials(), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.S3 = up
	now := time.Now()
	other := service(t, "etcd-1", ep, 24) // the other cluster's member, to seed the bucket
	for i := range 24 {
		seed(t, other, up, backup.Manifest{Name: fmt.Sprintf("c1-theirs-%02d", i), Cluster: "c1", ClusterID: id, Member: "etcd-1", Time: now.Add(time.Duration(i-24) * time.Hour).UTC(), Revision: int64(100000 + i)})
	}
	if err := s.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	mine, _ := backup.List(s.Dir)
	ms, err := up.List(context.Background())
	if err != nil || len(mine) == 0 {
		t.Fatalf("bucket %v, disk %v", err, mine)
	}
	newest := mine[len(mine)-1].Name
	if !slices.ContainsFunc(ms, func(m backup.Manifest) bool { return m.Name == newest }) {
		t.Errorf("retention deleted %s, the backup this round verified, from the bucket", newest)
	}
}

// TestASkewedMemberRestartingOftenDoesNotMultiplyBackups: a member whose
// clock runs 2 h ahead (an RTC in local time, its time sources out of
// reach) restarts every 5 minutes beside a member whose clock is right.
// At each restart it aged the other's record by its own clock and backed
// up, and the other answered that record from the future at once: 49
// backups in two 1 h intervals, and retention by count (24) kept under
// two hours of restore points. A member answers only the first record
// from the future at once; later ones wait their interval like any.
func TestASkewedMemberRestartingOftenDoesNotMultiplyBackups(t *testing.T) {
	for _, skew := range []time.Duration{-time.Hour, 2 * time.Hour} {
		t.Run(skew.String(), func(t *testing.T) {
			ep := startEtcd(t)
			base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
			var elapsed time.Duration
			member := func(name string, skew time.Duration, dir string) *Service {
				s := service(t, name, ep, 24)
				s.Config.IntervalSeconds = 3600
				if dir != "" {
					s.Dir = dir
				}
				s.Log = func(string, ...any) {}
				s.clock = func() time.Time { return base.Add(elapsed + skew) }
				return s
			}
			right := member("etcd-1", 0, "")
			skewed := member("etcd-2", skew, "")
			taken := map[string]bool{}
			for tick := range 120 { // a round a minute for 2 h
				if tick%5 == 0 {
					skewed = member("etcd-2", skew, skewed.Dir) // a restart: same disk, a new process
				}
				for _, s := range []*Service{right, skewed} {
					if err := s.Once(context.Background()); err != nil {
						t.Fatal(err)
					}
					ms, _ := backup.List(s.Dir)
					for _, m := range ms {
						taken[m.Name] = true
					}
				}
				elapsed += time.Minute
			}
			if len(taken) > 5 {
				t.Errorf("%d backups in two 1 h intervals", len(taken))
			}
		})
	}
}

// TestAClusterBootstrappedAgainKeepsItsRestorePoints: the data disks of
// one output directory wiped and the cluster started again bootstraps
// the same cluster ID, with revisions from 1. The bucket still held the
// first incarnation's 24 backups at revisions near 100000: ordered by
// revision they were "newer", so each round deleted the previous round's
// backup of the running cluster, which kept one restore point. The
// incarnation (backup.IncarnationKey) tells the two apart: the running cluster
// keeps its own, and leaves the other's alone.
func TestAClusterBootstrappedAgainKeepsItsRestorePoints(t *testing.T) {
	srv := s3test.Start(t, 0)
	srv.MakeBucket(t, "again")
	ep := startEtcd(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	id := clusterID(t, cli)
	up, err := backup.NewS3(ign.S3Target{Endpoint: "http://" + srv.Addr, Bucket: "again", Region: "us-east-1"}, "c1", s3test.Credentials(), nil)
	if err != nil {
		t.Fatal(err)
	}
	first := service(t, "etcd-1", ep, 24) // the first incarnation's disk
	now := time.Now()
	for i := range 24 {
		seed(t, first, up, backup.Manifest{Name: fmt.Sprintf("c1-first-%02d", i), Cluster: "c1", ClusterID: id, Incarnation: "0123456789abcdef", Member: "etcd-1", Time: now.Add(time.Duration(i-48) * time.Hour).UTC(), Revision: int64(100000 + i)})
	}
	s := service(t, "etcd-1", ep, 24)
	s.Config.IntervalSeconds = 1
	s.S3 = up
	for range 4 {
		time.Sleep(1100 * time.Millisecond) // an interval; names are to the second
		if err := s.Once(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := up.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mine := 0
	for _, m := range ms {
		if m.Incarnation != "0123456789abcdef" {
			mine++
		}
	}
	if mine != 4 || len(ms)-mine != 24 {
		t.Errorf("the bucket holds %d of the running cluster's 4 backups and %d of the first incarnation's 24", mine, len(ms)-mine)
	}
}
