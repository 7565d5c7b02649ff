package restore

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"

	"etcdimg/internal/spec"
)

func TestParseS3(t *testing.T) {
	for _, tc := range []struct {
		rest, bucket, key string
		ok                bool
	}{
		{"b/k", "b", "k", true},
		{"b/dir/snap.db", "b", "dir/snap.db", true},
		{"b", "", "", false},
		{"b/", "", "", false},
		{"/k", "", "", false},
		{"", "", "", false},
	} {
		b, k, err := ParseS3(tc.rest)
		if (err == nil) != tc.ok || b != tc.bucket || k != tc.key {
			t.Errorf("ParseS3(%q) = %q, %q, %v", tc.rest, b, k, err)
		}
		if err != nil && err.Error() != "want s3://bucket/key" {
			t.Errorf("ParseS3(%q): %v", tc.rest, err)
		}
	}
}

// TestUseBucketLeavesTheSpecsSectionAlone: the bucket named on the
// command line is used with the spec's endpoint; the section the loaded
// spec pointed at is not written to.
func TestUseBucketLeavesTheSpecsSectionAlone(t *testing.T) {
	c := spec.Default(1)
	UseBucket(c, "other") // no backup.s3: nothing to point
	if c.Backup.S3 != nil {
		t.Fatal("UseBucket made a backup.s3 section")
	}
	orig := &spec.S3{Endpoint: "https://s3.example:9000", Bucket: "backups"}
	c.Backup.S3 = orig
	UseBucket(c, "other")
	if c.Backup.S3.Bucket != "other" || c.Backup.S3.Endpoint != orig.Endpoint || orig.Bucket != "backups" {
		t.Errorf("after UseBucket: %+v, the spec's own %+v", c.Backup.S3, orig)
	}
}

type getter struct {
	data string
	err  error
}

func (g getter) GetKey(_ context.Context, key string, w io.Writer) error {
	if _, err := io.WriteString(w, g.data+key); err != nil {
		return err
	}
	return g.err
}

// TestFetchDownloadsIntoATemporaryFile: the object lands in a new file;
// on a failed download the file's path still comes back, to be removed.
func TestFetchDownloadsIntoATemporaryFile(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	p, err := Fetch(context.Background(), getter{data: "snapshot of "}, "k")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "snapshot of k" {
		t.Errorf("fetched %q", b)
	}
	boom := errors.New("no such key")
	p, err = Fetch(context.Background(), getter{err: boom}, "k")
	if !errors.Is(err, boom) || p == "" {
		t.Errorf("failed fetch: %q, %v", p, err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Errorf("the failed download's file is not left for the caller: %v", err)
	}
}
