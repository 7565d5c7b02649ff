package backup

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"etcdimg/ignition/ign"
)

// S3 is a bucket reached with minio-go: each backup is NAME.db, with its
// SHA-256, revision, cluster ID, etcd version and time in the object's
// metadata, and NAME.json (its manifest) beside it, under
// PREFIX/CLUSTER/.
type S3 struct {
	client *minio.Client
	target ign.S3Target
	dir    string // PREFIX + CLUSTER + "/"
	clock  *serverClock
}

// serverClock is the S3 client's transport: it notes the Date of the
// server's latest answer, and when it came.
type serverClock struct {
	next http.RoundTripper
	mu   sync.Mutex
	date time.Time // the server's Date
	at   time.Time // this member's clock then, with its monotonic reading
}

func (c *serverClock) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(r)
	if err == nil {
		if d, perr := http.ParseTime(resp.Header.Get("Date")); perr == nil {
			c.mu.Lock()
			c.date, c.at = d, time.Now()
			c.mu.Unlock()
		}
	}
	return resp, err
}

// NewS3 connects to t with the credentials file's AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY, trusting caPEM (when given) for the endpoint.
func NewS3(t ign.S3Target, cluster string, credentialsFile []byte, caPEM []byte) (*S3, error) {
	env, err := ign.EnvMap(credentialsFile)
	if err != nil {
		return nil, fmt.Errorf("s3 credentials: %w", err)
	}
	u, err := url.Parse(t.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("s3 endpoint: %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("s3 CA: no certificate in it")
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	clock := &serverClock{next: tr}
	cli, err := minio.New(u.Host, &minio.Options{
		Creds:     credentials.NewStaticV4(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], ""),
		Secure:    u.Scheme == "https",
		Region:    t.Region,
		Transport: clock,
	})
	if err != nil {
		return nil, fmt.Errorf("s3: %w", err)
	}
	prefix := t.Prefix
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &S3{client: cli, target: t, dir: prefix + cluster + "/", clock: clock}, nil
}

// Where names the bucket and prefix, as s3://bucket/prefix/cluster/.
func (s *S3) Where() string { return "s3://" + s.target.Bucket + "/" + s.dir }

// Key is the object key of backup name's snapshot.
func (s *S3) Key(name string) string { return s.dir + name + ".db" }

// Put uploads the snapshot at path and then its manifest, and checks the
// stored object's size and SHA-256 metadata: an upload counts once the
// bucket holds what was verified.
// A failed upload takes back what it put: the bucket holds no snapshot
// without its manifest.
func (s *S3) Put(ctx context.Context, path string, m Manifest) (err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	// A snapshot of the same name that another cluster wrote (one of the
	// same name shares the path) is neither overwritten nor, when this
	// upload fails, taken back.
	if st, err := s.client.StatObject(ctx, s.target.Bucket, s.Key(m.Name), minio.StatObjectOptions{}); err == nil && st.UserMetadata["Cluster-Id"] != m.ClusterID {
		return fmt.Errorf("the bucket already holds %s of cluster %q, not %q; not overwritten", s.Key(m.Name), st.UserMetadata["Cluster-Id"], m.ClusterID)
	}
	defer func() {
		if err != nil {
			rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer rcancel()
			s.client.RemoveObject(rctx, s.target.Bucket, s.dir+m.Name+".json", minio.RemoveObjectOptions{})
			s.client.RemoveObject(rctx, s.target.Bucket, s.Key(m.Name), minio.RemoveObjectOptions{})
		}
	}()
	meta := map[string]string{
		"sha256": m.SHA256, "revision": fmt.Sprint(m.Revision), "cluster-id": m.ClusterID,
		"etcd-version": m.EtcdVersion, "time": m.Time.Format(time.RFC3339), "member": m.Member,
	}
	if _, err := s.client.FPutObject(ctx, s.target.Bucket, s.Key(m.Name), path, minio.PutObjectOptions{ContentType: "application/octet-stream", UserMetadata: meta}); err != nil {
		return err
	}
	st, err := s.client.StatObject(ctx, s.target.Bucket, s.Key(m.Name), minio.StatObjectOptions{})
	if err != nil {
		return fmt.Errorf("check the upload: %w", err)
	}
	if st.Size != m.Size || st.UserMetadata["Sha256"] != m.SHA256 {
		return fmt.Errorf("check the upload: the bucket holds %d bytes with SHA-256 %q, not %d with %s", st.Size, st.UserMetadata["Sha256"], m.Size, m.SHA256)
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	_, err = s.client.PutObject(ctx, s.target.Bucket, s.dir+m.Name+".json", bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{ContentType: "application/json"})
	return err
}

// List returns the backups in the bucket, oldest first (by time): those
// whose manifest and snapshot are both there, of any cluster ID: a
// cluster of the same name (in the same bucket, or one restored from
// this one) shares the path. Retention picks its own with Own.
func (s *S3) List(ctx context.Context) ([]Manifest, error) {
	have := map[string]bool{}
	var manifests []string
	for o := range s.client.ListObjects(ctx, s.target.Bucket, minio.ListObjectsOptions{Prefix: s.dir}) {
		if o.Err != nil {
			return nil, o.Err
		}
		have[o.Key] = true
		if strings.HasSuffix(o.Key, ".json") {
			manifests = append(manifests, o.Key)
		}
	}
	var out []Manifest
	for _, k := range manifests {
		name := strings.TrimSuffix(strings.TrimPrefix(k, s.dir), ".json")
		if !have[s.Key(name)] {
			continue
		}
		obj, err := s.client.GetObject(ctx, s.target.Bucket, k, minio.GetObjectOptions{})
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(io.LimitReader(obj, 1<<20))
		obj.Close()
		if err != nil {
			return nil, err
		}
		var m Manifest
		if json.Unmarshal(b, &m) == nil && m.Name == name {
			out = append(out, m)
		}
	}
	sortManifests(out)
	return out, nil
}

// Delete removes backup m's snapshot, then its manifest, once the
// snapshot's metadata says it is of m's cluster: an object another
// cluster wrote under the same name is left alone.
func (s *S3) Delete(ctx context.Context, m Manifest) error {
	st, err := s.client.StatObject(ctx, s.target.Bucket, s.Key(m.Name), minio.StatObjectOptions{})
	if err != nil {
		return fmt.Errorf("delete %s: %w", m.Name, err)
	}
	if id := st.UserMetadata["Cluster-Id"]; id != m.ClusterID {
		return fmt.Errorf("delete %s: the bucket's snapshot is of cluster %q, not %q; left alone", m.Name, id, m.ClusterID)
	}
	if err := s.client.RemoveObject(ctx, s.target.Bucket, s.Key(m.Name), minio.RemoveObjectOptions{}); err != nil {
		return fmt.Errorf("delete %s: %w", m.Name, err)
	}
	if err := s.client.RemoveObject(ctx, s.target.Bucket, s.dir+m.Name+".json", minio.RemoveObjectOptions{}); err != nil {
		return fmt.Errorf("delete %s: %w", m.Name, err)
	}
	return nil
}

// ServerTime is the S3 server's clock: the Date of its answer to a cheap
// request (whether the bucket exists), advanced by the time since.
func (s *S3) ServerTime(ctx context.Context) (time.Time, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := s.client.BucketExists(ctx, s.target.Bucket)
	s.clock.mu.Lock()
	date, at := s.clock.date, s.clock.at
	s.clock.mu.Unlock()
	// Any answer dates the server, an error status too.
	if at.Before(start) {
		if err == nil {
			err = fmt.Errorf("no Date header in its answer")
		}
		return time.Time{}, fmt.Errorf("the time of %s: %w", s.target.Endpoint, err)
	}
	return date.Add(time.Since(at)), nil
}

// Get downloads backup name's snapshot into w.
func (s *S3) Get(ctx context.Context, name string, w io.Writer) error {
	return s.GetKey(ctx, s.Key(name), w)
}

// GetKey downloads the object at key (any key of the bucket) into w.
func (s *S3) GetKey(ctx context.Context, key string, w io.Writer) error {
	obj, err := s.client.GetObject(ctx, s.target.Bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return err
	}
	defer obj.Close()
	_, err = io.Copy(w, obj)
	return err
}

// Bucket is the bucket's name.
func (s *S3) Bucket() string { return s.target.Bucket }
