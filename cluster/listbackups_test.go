package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	"etcdimg/internal/backup"
	"etcdimg/internal/etcdtest"
	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
)

// TestBackupsFromMembersThatDoNotAnswer: list prints each silent member
// and names them in its error; get refuses; the bucket needs a backup.s3
// section.
func TestBackupsFromMembersThatDoNotAnswer(t *testing.T) {
	c := spec.Default(2)
	dir := outdir.Layout(t.TempDir())
	if _, err := render.Run(c, dir); err != nil {
		t.Fatal(err)
	}
	u := etcdtest.FreeURL(t, "http")
	src := BackupSource{Reach: func(spec.Member, int) string { return u.Host }}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var w strings.Builder
	err := ListBackups(ctx, &w, c, dir, src, time.Now())
	if want := "backups: etcd-1, etcd-2 did not answer"; err == nil || err.Error() != want {
		t.Errorf("list: %v, want %s", err, want)
	}
	if !strings.HasPrefix(w.String(), "etcd-1: unreachable: ") || !strings.Contains(w.String(), "\netcd-2: unreachable: ") {
		t.Errorf("list printed:\n%s", w.String())
	}
	if _, _, err := GetBackup(ctx, c, dir, src, "x", t.TempDir()+"/x.db"); err == nil || !strings.Contains(err.Error(), "no member holds a backup named x") {
		t.Errorf("get: %v", err)
	}
	src.S3 = true
	if err := ListBackups(ctx, &w, c, dir, src, time.Now()); err == nil || !strings.Contains(err.Error(), "no backup.s3 section") {
		t.Errorf("list --s3 without a section: %v", err)
	}
	if _, _, err := GetBackup(ctx, c, dir, src, "x", "x.db"); err == nil || !strings.Contains(err.Error(), "no backup.s3 section") {
		t.Errorf("get --s3 without a section: %v", err)
	}
}

// TestBackupTableNamesTheClusterAndTheAge: one aligned line per backup.
func TestBackupTableNamesTheClusterAndTheAge(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	var w strings.Builder
	BackupTable(&w, "s3", []backup.Manifest{{Name: "b1", Time: now.Add(-time.Minute), ClusterID: "abc", Revision: 7, Keys: 3, Size: 1 << 20, SHA256: "0123456789abcdef", Member: "etcd-1"}}, now)
	if want := "s3  b1  2025-01-02T03:03:05Z (1m0s ago)  cluster abc  rev 7  3 keys  1.0 MiB  sha256 0123456789ab…  by etcd-1\n"; w.String() != want {
		t.Errorf("got  %q\nwant %q", w.String(), want)
	}
}
