// Package backup is the appliance's backup service: one verified
// snapshot per interval for the whole cluster, whichever members are up.
//
// Every member runs it. Each tick, a member takes the cluster's backup
// lock (an etcd mutex on a lease, so a member that dies lets go) and
// reads the cluster's last backup record; only when that record is an
// interval old does it save a snapshot from its own etcd, verify it
// (etcd's SHA-256, the database, revision and keys), keep it on its data
// disk, upload it to S3 when configured, and write the new record. So
// there is one backup per interval for the cluster, and it still
// happens while any member is down.
//
// Retention keeps Retain backups (and drops those older than MaxAge) in
// each place, never the newest verified one; a failed upload never
// touches the local copy. Metrics are served in Prometheus' text format.
package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	csnap "go.etcd.io/etcd/client/v3/snapshot"
	"go.uber.org/zap"

	"etcdimg/ignition/ign"
	"etcdimg/snapshot"
)

// Keys the service keeps in etcd.
const (
	LockKey   = "/etcdimg/backup/lock"
	RecordKey = "/etcdimg/backup/last"
)

// Manifest describes one verified backup. It sits beside the snapshot
// on the data disk (NAME.json) and in the bucket, and the newest one is
// the cluster's record at RecordKey.
type Manifest struct {
	Name        string    `json:"name"`
	Cluster     string    `json:"cluster"`
	ClusterID   string    `json:"clusterID"`
	Member      string    `json:"member"`
	Time        time.Time `json:"time"`
	Revision    int64     `json:"revision"`
	Keys        int       `json:"keys"`
	Size        int64     `json:"size"`
	SHA256      string    `json:"sha256"`
	EtcdVersion string    `json:"etcdVersion"`
	Seconds     float64   `json:"seconds"` // to save and verify
	Targets     []string  `json:"targets"` // where it was stored: local, s3
}

// walReserve is what backups leave free on the data disk beside the
// database's quota: WAL segments and etcd's own snapshots.
const walReserve = 256 << 20

// Service is one member's backup service.
type Service struct {
	Member   string
	Endpoint string           // this member's client URL
	Client   clientv3.Config  // TLS and endpoint for that URL
	Config   ign.BackupConfig // interval, retention, S3
	Dir      string           // the data disk's backup directory
	Quota    int64            // etcd's backend quota, which backups leave room for
	// MetricsTLS serves the appliance's metrics on the member's address
	// over mTLS, as etcd's own (metrics.tls).
	MetricsTLS bool
	// FirstDelay is how long Run waits before its first round.
	FirstDelay time.Duration
	S3         Uploader // nil without S3
	Log        func(format string, args ...any)

	mu      sync.Mutex
	metrics metrics
}

// Uploader is an S3 bucket (see NewS3).
type Uploader interface {
	Put(ctx context.Context, path string, m Manifest) error
	List(ctx context.Context) ([]Manifest, error)
	Delete(ctx context.Context, name string) error
	Where() string
}

func (s *Service) interval() time.Duration {
	return time.Duration(s.Config.IntervalSeconds) * time.Second
}

// tick is how often a member looks at the record: often enough that a
// backup is at most a fraction of an interval late.
func (s *Service) tick() time.Duration {
	return min(max(s.interval()/6, 5*time.Second), time.Minute)
}

// Run runs the service until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	s.metrics.started = time.Now()
	// The first round waits a little: at boot, etcd is starting and
	// the CPU is better spent there.
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(s.FirstDelay):
	}
	var said string
	var saidAt time.Time
	for {
		// An error is printed when it changes, or once a minute: etcd
		// that is still starting must not flood the console.
		if err := s.Once(ctx); err != nil && ctx.Err() == nil {
			if err.Error() != said || time.Since(saidAt) > time.Minute {
				s.Log("backup: %v", err)
				said, saidAt = err.Error(), time.Now()
			}
		} else {
			said = ""
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.tick()):
		}
	}
}

// Once does one round: under the cluster's lock, a backup if the last
// one is an interval old.
func (s *Service) Once(ctx context.Context) error {
	cli, err := clientv3.New(s.Client)
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	last, err := readRecord(ctx, cli)
	if err != nil {
		return fmt.Errorf("read the last backup: %w", err)
	}
	s.setLast(last)
	if last != nil && time.Since(last.Time) < s.interval() {
		return nil
	}
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(30), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	defer sess.Close()
	mu := concurrency.NewMutex(sess, LockKey)
	lctx, lcancel := context.WithTimeout(ctx, 10*time.Second)
	err = mu.TryLock(lctx)
	lcancel()
	if errors.Is(err, concurrency.ErrLocked) {
		return nil // another member is at it
	}
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	defer mu.Unlock(context.Background())
	// Under the lock, the record is read again: another member may have
	// just finished.
	if last, err = readRecord(ctx, cli); err != nil {
		return fmt.Errorf("read the last backup: %w", err)
	}
	if last != nil && time.Since(last.Time) < s.interval() {
		s.setLast(last)
		return nil
	}
	m, err := s.take(ctx, cli)
	if err != nil {
		s.fail("local")
		return err
	}
	s.ok("local")
	m.Targets = []string{"local"}
	if s.S3 != nil {
		if err := s.S3.Put(ctx, filepath.Join(s.Dir, m.Name+".db"), *m); err != nil {
			s.fail("s3")
			s.Log("backup: %s: upload to %s failed: %v; the local copy is kept", m.Name, s.S3.Where(), err)
		} else {
			s.ok("s3")
			m.Targets = append(m.Targets, "s3")
		}
	}
	if err := writeManifest(s.Dir, *m); err != nil {
		return err
	}
	// Retention runs before the record is written: a round is over, for
	// whoever reads the record, once its old backups are gone too.
	s.retain(ctx)
	b, _ := json.Marshal(m)
	if _, err := cli.Put(ctx, RecordKey, string(b)); err != nil {
		return fmt.Errorf("record the backup: %w", err)
	}
	s.setLast(m)
	where := "on the data disk"
	if slices.Contains(m.Targets, "s3") {
		where += " and in " + s.S3.Where()
	}
	s.Log("backup: %s: revision %d, %d keys, %.1f MiB, verified in %.1fs, kept %s", m.Name, m.Revision, m.Keys, float64(m.Size)/(1<<20), m.Seconds, where)
	return nil
}

// take saves a snapshot from this member's etcd into the backup
// directory under a temporary name, verifies it, and only then gives it
// its name.
func (s *Service) take(ctx context.Context, cli *clientv3.Client) (*Manifest, error) {
	start := time.Now()
	st, err := cli.Status(ctx, s.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	// Backups never take the room etcd's database may still grow into
	// (up to its quota), nor a reserve for the WAL.
	if need := st.DbSize + max(s.Quota-st.DbSize, 0) + walReserve; s.Quota > 0 {
		if free, err := freeBytes(s.Dir); err == nil && free < need {
			return nil, fmt.Errorf("the data disk has %d MiB free; a backup of the %d MiB database must leave room for the database to grow to its %d MiB quota and %d MiB for the WAL (%d MiB in all): lower backup.retain or grow the data disk", free>>20, st.DbSize>>20, s.Quota>>20, walReserve>>20, need>>20)
		}
	}
	tmp, err := os.CreateTemp(s.Dir, ".snapshot-*.tmp")
	if err != nil {
		return nil, err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	cfg := s.Client
	cfg.Endpoints = []string{s.Endpoint}
	cfg.Logger = zap.NewNop()
	version, err := csnap.SaveWithVersion(ctx, zap.NewNop(), cfg, tmp.Name())
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	info, err := snapshot.Verify(tmp.Name(), false)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	m := &Manifest{
		Name:    fmt.Sprintf("%s-%s-rev%d", s.Config.Cluster, now.Format("20060102T150405Z"), info.Revision),
		Cluster: s.Config.Cluster, ClusterID: fmt.Sprintf("%x", st.Header.ClusterId), Member: s.Member,
		Time: now, Revision: info.Revision, Keys: info.TotalKeys, Size: info.Size, SHA256: info.SHA256,
		EtcdVersion: version, Seconds: time.Since(start).Seconds(),
	}
	if err := os.Rename(tmp.Name(), filepath.Join(s.Dir, m.Name+".db")); err != nil {
		return nil, err
	}
	return m, nil
}

// readRecord reads the cluster's last backup record. A record of
// another cluster (one this cluster was restored from) does not count:
// a restored cluster backs itself up at once.
func readRecord(ctx context.Context, cli *clientv3.Client) (*Manifest, error) {
	r, err := cli.Get(ctx, RecordKey)
	if err != nil {
		return nil, err
	}
	if len(r.Kvs) == 0 {
		return nil, nil
	}
	var m Manifest
	if err := json.Unmarshal(r.Kvs[0].Value, &m); err != nil {
		return nil, nil // a damaged record is overwritten by the next backup
	}
	if m.ClusterID != fmt.Sprintf("%x", r.Header.ClusterId) {
		return nil, nil
	}
	return &m, nil
}

// LastBackup reads the cluster's last backup record, or nil.
func LastBackup(ctx context.Context, cli *clientv3.Client) (*Manifest, error) {
	return readRecord(ctx, cli)
}

func writeManifest(dir string, m Manifest) error {
	b, _ := json.MarshalIndent(m, "", "  ")
	tmp := filepath.Join(dir, "."+m.Name+".json.tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, m.Name+".json"))
}

// List returns the verified backups in dir, oldest first: those with a
// manifest beside their snapshot.
func List(dir string) ([]Manifest, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []Manifest
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var m Manifest
		if json.Unmarshal(b, &m) != nil || m.Name+".json" != filepath.Base(p) {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, m.Name+".db")); err != nil {
			continue
		}
		out = append(out, m)
	}
	sortManifests(out)
	return out, nil
}

func sortManifests(ms []Manifest) {
	slices.SortFunc(ms, func(a, b Manifest) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
}

// Expired picks, from backups sorted oldest first, those retention
// drops: all but the newest retain, and any older than maxAge. The
// newest is never among them.
func Expired(ms []Manifest, retain int, maxAge time.Duration, now time.Time) []Manifest {
	var out []Manifest
	for i, m := range ms {
		if i == len(ms)-1 {
			break
		}
		if len(ms)-i > max(retain, 1) || (maxAge > 0 && now.Sub(m.Time) > maxAge) {
			out = append(out, m)
		}
	}
	return out
}

func (s *Service) retain(ctx context.Context) {
	maxAge := time.Duration(s.Config.MaxAgeSeconds) * time.Second
	if ms, err := List(s.Dir); err == nil {
		for _, m := range Expired(ms, s.Config.Retain, maxAge, time.Now()) {
			os.Remove(filepath.Join(s.Dir, m.Name+".json"))
			os.Remove(filepath.Join(s.Dir, m.Name+".db"))
		}
	}
	if s.S3 != nil {
		ms, err := s.S3.List(ctx)
		if err != nil {
			s.Log("backup: retention in %s: %v", s.S3.Where(), err)
			return
		}
		for _, m := range Expired(ms, s.Config.Retain, maxAge, time.Now()) {
			if err := s.S3.Delete(ctx, m.Name); err != nil {
				s.Log("backup: retention in %s: %v", s.S3.Where(), err)
			}
		}
	}
}

// Open returns the snapshot of the backup called name in dir.
func Open(dir, name string) (*os.File, Manifest, error) {
	ms, err := List(dir)
	if err != nil {
		return nil, Manifest{}, err
	}
	for _, m := range ms {
		if m.Name == name {
			f, err := os.Open(filepath.Join(dir, m.Name+".db"))
			return f, m, err
		}
	}
	return nil, Manifest{}, fmt.Errorf("no backup %q", name)
}
