package restore

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"time"

	"etcdimg/internal/spec"
)

// A snapshot named s3://BUCKET/KEY is fetched from the spec's S3
// endpoint with its credentials, into a temporary file outside the
// output directory: a bad object writes nothing there, and Prepare then
// verifies it like any file.

// ParseS3 splits what follows s3:// into the bucket and the key.
func ParseS3(rest string) (bucket, key string, err error) {
	bucket, key, ok := strings.Cut(rest, "/")
	if !ok || bucket == "" || key == "" {
		return "", "", errors.New("want s3://bucket/key")
	}
	return bucket, key, nil
}

// UseBucket points c's backup.s3 section at bucket, keeping its endpoint
// and credentials; the section c shares with others is not changed.
func UseBucket(c *spec.Cluster, bucket string) {
	if c.Backup.S3 != nil && c.Backup.S3.Bucket != bucket {
		s3 := *c.Backup.S3
		s3.Bucket = bucket
		c.Backup.S3 = &s3
	}
}

// Getter reads one object of a bucket (backup.S3).
type Getter interface {
	GetKey(ctx context.Context, key string, w io.Writer) error
}

// fetchTimeout bounds one download.
const fetchTimeout = 30 * time.Minute

// Fetch downloads key into a new temporary file and returns its path;
// the caller removes it, also when Fetch fails after making it.
func Fetch(ctx context.Context, g Getter, key string) (string, error) {
	tmp, err := os.CreateTemp("", "etcdimg-restore-*.db")
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	err = g.GetKey(ctx, key, tmp)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	return tmp.Name(), err
}
