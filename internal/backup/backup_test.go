package backup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"etcdimg/ignition/ign"
	"etcdimg/internal/s3test"
)

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
	WriteManifest(dir, Manifest{Name: "good", Time: time.Now()})
	os.WriteFile(filepath.Join(dir, "good.db"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(dir, "orphan.db"), []byte("x"), 0o600)
	WriteManifest(dir, Manifest{Name: "no-db", Time: time.Now()})
	os.WriteFile(filepath.Join(dir, ".snapshot-1.tmp"), []byte("x"), 0o600)
	ms, err := List(dir)
	if err != nil || len(ms) != 1 || ms[0].Name != "good" {
		t.Fatalf("list %+v %v", ms, err)
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

// TestRetentionOrdersByRevision: retention looks at one cluster's
// backups only, ordered by revision whatever their times say (a member
// whose clock ran behind or ahead dated some), and deletes for age only
// the oldest: never one newer than a backup it keeps.
func TestRetentionOrdersByRevision(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	ms := []Manifest{
		{Name: "r3-clock-behind", ClusterID: "a1", Revision: 300, Time: now.Add(-100 * 24 * time.Hour)},
		{Name: "r1", ClusterID: "a1", Revision: 100, Time: now.Add(-50 * 24 * time.Hour)},
		{Name: "other", ClusterID: "b2", Revision: 50, Time: now.Add(-90 * 24 * time.Hour)},
		{Name: "r4-clock-ahead", ClusterID: "a1", Revision: 400, Time: now.Add(300 * 24 * time.Hour)},
		{Name: "r2", ClusterID: "a1", Revision: 200, Time: now.Add(-time.Hour)},
		{Name: "r5", ClusterID: "a1", Revision: 500, Time: now.Add(-2 * time.Hour)},
		{Name: "no-id", Revision: 1, Time: now.Add(-99 * 24 * time.Hour)},
	}
	names := func(ms []Manifest) string {
		var s []string
		for _, m := range ms {
			s = append(s, m.Name)
		}
		return strings.Join(s, ",")
	}
	if got := names(Own(ms, "a1", "")); got != "r1,r2,r3-clock-behind,r4-clock-ahead,r5" {
		t.Fatalf("own backups %q", got)
	}
	if got := names(Own(ms, "", "")); got != "" {
		t.Fatalf("backups of no cluster ID: %q", got)
	}
	for _, tc := range []struct {
		name   string
		retain int
		maxAge time.Duration
		want   string
	}{
		{"count", 3, 0, "r1,r2"},
		// r3 is past maxAge by its time, but r2 (older) is not: both stay.
		{"age stops at the first young one", 9, 720 * time.Hour, "r1"},
		{"age and count", 2, 720 * time.Hour, "r1,r2,r3-clock-behind"},
		{"age past all keeps the newest", 9, time.Nanosecond, "r1,r2,r3-clock-behind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := names(Expired(Own(ms, "a1", ""), tc.retain, tc.maxAge, now)); got != tc.want {
				t.Errorf("expired %q, want %q", got, tc.want)
			}
		})
	}
}
