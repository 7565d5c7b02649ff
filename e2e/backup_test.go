package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"etcdimg/internal/backup"
	"etcdimg/internal/s3test"
	"etcdimg/internal/snapshot"
	"etcdimg/internal/spec"
	"etcdimg/testvm"
)

// TestBackupsReachTheNodesAndTheBucket is docs/backups.md's backups: a spec
// with a one-minute interval, retention 2 and an S3 bucket (a real S3
// server on the host, which the members reach at a LAN address). Within
// three minutes a verified backup is in the bucket and on a member, and
// Prometheus scrapes the backup metrics; retention holds in both places;
// with the S3 server stopped, failures are counted while the members go
// on backing up to their disks; with a member stopped, backups go on.
func TestBackupsReachTheNodesAndTheBucket(t *testing.T) {
	longTest(t, rankBackups)
	srv := s3test.Start(t, 0)
	srv.MakeBucket(t, "etcd-backups")
	_, port, _ := strings.Cut(srv.Addr, ":")
	work := t.TempDir()
	creds := filepath.Join(work, "s3-credentials")
	os.WriteFile(creds, s3test.Credentials(), 0o600)
	c := spec.Default(3)
	c.Backup = spec.Backup{Interval: spec.Duration(time.Minute), Retain: 2, S3: &spec.S3{
		Endpoint: "http://192.168.2.250:" + port, Bucket: "etcd-backups", Prefix: "e2e", Region: "us-east-1", CredentialsFile: creds,
	}}
	b, err := spec.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	specPath := filepath.Join(work, "etcdimg.yaml")
	os.WriteFile(specPath, b, 0o644)
	u := upBuilt(t, work, "--config", specPath)
	_, clusterID := membersByName(t, u)

	bucket := srv.Client(t)
	// A backup is in the bucket once its manifest is: the snapshot goes
	// first and the manifest last, so a snapshot alone is an upload
	// under way (or one that failed and is being taken back).
	objects := func() []string {
		have := map[string]bool{}
		var keys []string
		for o := range bucket.ListObjects(context.Background(), "etcd-backups", minio.ListObjectsOptions{Prefix: "e2e/" + c.Name + "/"}) {
			have[o.Key] = true
		}
		for k := range have {
			if db := strings.TrimSuffix(k, ".json") + ".db"; strings.HasSuffix(k, ".json") && have[db] {
				keys = append(keys, db)
			}
		}
		sort.Strings(keys)
		return keys
	}
	// Within three minutes of up: a backup in the bucket.
	waitUntil(t, u, 3*time.Minute, "a backup in the bucket", func() bool { return len(objects()) > 0 })
	// The newest: retention (2 kept) removes the oldest at the third round.
	all := objects()
	key := all[len(all)-1]
	stdout, stderr, code := etcdimg(t, work, "backups", "list", "--s3", "--out", u.out)
	t.Logf("backups list --s3:\n%s", stdout)
	if code != 0 {
		t.Fatalf("backups list --s3: %s", stderr)
	}
	name := strings.TrimSuffix(filepath.Base(key), ".db")
	if !strings.Contains(stdout, name) {
		t.Errorf("backups list --s3 does not name %s", name)
	}
	got := filepath.Join(work, "from-s3.db")
	if _, stderr, code := etcdimg(t, work, "backups", "get", name, got, "--s3", "--out", u.out); code != 0 {
		t.Fatalf("backups get --s3: %s", stderr)
	}
	info, err := snapshot.Verify(got, false)
	if err != nil {
		t.Fatalf("the bucket's backup: %v", err)
	}
	st, err := bucket.StatObject(context.Background(), "etcd-backups", key, minio.StatObjectOptions{})
	if err != nil || st.UserMetadata["Sha256"] != info.SHA256 || st.UserMetadata["Cluster-Id"] != fmt.Sprintf("%x", clusterID) {
		t.Errorf("object metadata %v (%v), want sha256 %s and cluster %x", st.UserMetadata, err, info.SHA256, clusterID)
	}

	// restore reads s3:// objects: this one downloads and verifies, and
	// is then refused because the cluster runs; a missing one is one
	// clear error.
	if _, stderr, code := etcdimg(t, work, "restore", "--snapshot", "s3://etcd-backups/"+key, "--out", u.out); code != 1 || !strings.Contains(stderr, "is running") {
		t.Errorf("restore from the bucket while running: exit %d: %s", code, stderr)
	}
	if _, stderr, code := etcdimg(t, work, "restore", "--snapshot", "s3://etcd-backups/e2e/none.db", "--out", u.out); code != 1 || !strings.Contains(stderr, "--snapshot s3://etcd-backups/e2e/none.db") {
		t.Errorf("restore of a missing object: exit %d: %s", code, stderr)
	}

	// The same backup on a member's data disk, fetched over mTLS.
	stdout, stderr, code = etcdimg(t, work, "backups", "list", "--out", u.out)
	t.Logf("backups list:\n%s", stdout)
	if code != 0 || !strings.Contains(stdout, name) {
		t.Fatalf("backups list: exit %d, %s", code, stderr)
	}
	fromNode := filepath.Join(work, "from-node.db")
	if _, stderr, code := etcdimg(t, work, "backups", "get", name, fromNode, "--out", u.out); code != 0 {
		t.Fatalf("backups get: %s", stderr)
	}
	if ni, err := snapshot.Verify(fromNode, false); err != nil || ni.SHA256 != info.SHA256 {
		t.Errorf("the member's copy: %v, sha256 %s, the bucket's %s", err, ni.SHA256, info.SHA256)
	}
	if stdout, _, _ := etcdimg(t, work, "status", "--out", u.out); !strings.Contains(stdout, "last backup: "+c.Name) {
		t.Errorf("status does not say when the last backup was:\n%s", stdout)
	}

	// Prometheus scrapes the backup metrics of every member.
	query, _, _, stop := startPrometheus(t, filepath.Join(u.out, "run", "prometheus.yml"))
	defer stop()
	waitUntil(t, u, 2*time.Minute, "prometheus scraping the backup metrics", func() bool {
		last, err := query(`etcdimg_backup_last_revision{job="etcdimg"}`)
		return err == nil && len(last) == 3
	})

	// Retention: after three backups, the bucket and each disk keep 2.
	waitUntil(t, u, 4*time.Minute, "a third backup", func() bool { return countRecords(t, u) >= 3 })
	if keys := objects(); len(keys) != 2 {
		t.Errorf("bucket holds %d backups, retain is 2: %v", len(keys), keys)
	}
	ms := nodeBackups(t, u)
	for member, n := range ms {
		if n > 2 {
			t.Errorf("%s keeps %d backups, retain is 2", member, n)
		}
	}

	// S3 down: failures counted, local backups go on. (The failure is
	// counted before that round's record is written: wait for both.)
	srv.Stop()
	before := lastBackup(t, u)
	var after *backup.Manifest
	waitUntil(t, u, 3*time.Minute, "an S3 failure counted and a local-only backup", func() bool {
		f, err := query(`etcdimg_backup_failures_total{job="etcdimg",target="s3"}`)
		if err != nil {
			return false
		}
		failed := false
		for _, v := range f {
			if n, _ := strconv.ParseFloat(v, 64); n > 0 {
				failed = true
			}
		}
		// A round that uploaded just before the stop does not count.
		m, err := lastBackupErr(t, u)
		if err != nil || m.Name == before.Name || strings.Join(m.Targets, ",") != "local" {
			return false
		}
		after = m
		return failed
	})
	if strings.Join(after.Targets, ",") != "local" {
		t.Errorf("with S3 down: last backup %+v, want a local-only one", after)
	}

	// One member stopped: a backup still happens.
	holder := after.Member
	if _, stderr, code := etcdimg(t, work, "stop", holder, "--out", u.out); code != 0 {
		t.Fatalf("stop %s: %s", holder, stderr)
	}
	u.reload(t)
	waitUntil(t, u, 3*time.Minute, "a backup with "+holder+" stopped", func() bool {
		m, err := lastBackupErr(t, u)
		return err == nil && m.Name != after.Name && m.Member != holder
	})
}

// waitUntil polls ok every two seconds until timeout, then fails with
// the members' console tails.
func waitUntil(t testing.TB, u *upCluster, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			for _, m := range u.state.Members {
				t.Logf("--- %s console tail ---\n%s", m.Name, testvm.TailFile(m.Console, 15))
			}
			t.Fatalf("no %s within %s", what, timeout)
		}
		time.Sleep(2 * time.Second)
	}
}

func lastBackupErr(t *testing.T, u *upCluster) (*backup.Manifest, error) {
	t.Helper()
	for i, m := range u.state.Members {
		if !m.Running() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := backup.LastBackup(ctx, u.client(t, i, u.admin))
		cancel()
		if err == nil && r != nil {
			return r, nil
		}
	}
	return nil, fmt.Errorf("no backup record")
}

func lastBackup(t *testing.T, u *upCluster) *backup.Manifest {
	t.Helper()
	m, err := lastBackupErr(t, u)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// countRecords counts the distinct backups the cluster's record has
// named, from the record's revision history.
func countRecords(t *testing.T, u *upCluster) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli := u.client(t, 0, u.admin)
	r, err := cli.Get(ctx, backup.RecordKey)
	if err != nil || len(r.Kvs) == 0 {
		return 0
	}
	return int(r.Kvs[0].Version)
}

// nodeBackups counts each member's backups, as `backups list` prints
// them.
func nodeBackups(t *testing.T, u *upCluster) map[string]int {
	t.Helper()
	stdout, stderr, code := etcdimg(t, u.work, "backups", "list", "--out", u.out)
	if code != 0 {
		t.Fatalf("backups list: %s", stderr)
	}
	out := map[string]int{}
	for _, line := range strings.Split(stdout, "\n") {
		var member string
		var n int
		if _, err := fmt.Sscanf(line, "%s %d backups", &member, &n); err == nil {
			out[strings.TrimSuffix(member, ":")] = n
		}
	}
	return out
}
