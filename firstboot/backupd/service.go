// Package backupd is the appliance's backup service, which the node
// binary runs as etcd-backup (layout.BackupBinary): one verified
// snapshot per interval for the whole cluster, whichever members are up.
// It also serves the member's backups over mTLS (backup.APIPrefix) and
// the node's own metrics. What the operator's machine shares with it (the
// manifest, the record, listing, retention's rules, the S3 store) is
// package backup.
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
// A record dated after this member's clock (beyond backup.MaxSkew) does not
// count: the member backs up anyway, counts it and says so.
//
// Retention keeps Retain backups (and drops those older than MaxAge) in
// each place, never the newest verified one; a failed upload never
// touches the local copy. It considers only this cluster's backups (by
// cluster ID), ordered by revision, so it never deletes what another
// cluster of the same name wrote, and a wrong clock cannot reorder them.
// Age-based deletion runs only on a clock that agrees with the cluster's
// last record and with the S3 server's. Metrics are served in
// Prometheus' text format.
package backupd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	csnap "go.etcd.io/etcd/client/v3/snapshot"
	"go.uber.org/zap"

	"etcdimg/firstboot/maintd"
	"etcdimg/ignition/ign"
	"etcdimg/internal/backup"
	"etcdimg/internal/snapshot"
)

// incarnation returns the cluster's value at backup.IncarnationKey, writing a
// new random one if there is none yet (one transaction: members that
// race agree on the first written).
func incarnation(ctx context.Context, cli *clientv3.Client) (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("incarnation: %w", err)
	}
	r, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(backup.IncarnationKey), "=", 0)).
		Then(clientv3.OpPut(backup.IncarnationKey, hex.EncodeToString(b))).
		Else(clientv3.OpGet(backup.IncarnationKey)).
		Commit()
	if err != nil {
		return "", fmt.Errorf("incarnation: %w", err)
	}
	if r.Succeeded {
		return hex.EncodeToString(b), nil
	}
	if kvs := r.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 && len(kvs[0].Value) > 0 {
		return string(kvs[0].Value), nil
	}
	return "", fmt.Errorf("incarnation: %s is empty", backup.IncarnationKey)
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
	// Readers are the certificate CNs the backups API serves (Readers:
	// the admin's and the members').
	Readers []string
	// SlotStatus is PID 1's record of the boot slots
	// (layout.SlotStatusPath), which the metrics report; "" for none.
	SlotStatus string
	// Maintenance is the member's own care of its database, run beside
	// the backups; its metrics are served with theirs. nil: none.
	Maintenance *maintd.Service
	Log         func(format string, args ...any)

	// clock is the member's clock (nil: time.Now).
	clock func() time.Time

	mu      sync.Mutex
	metrics metrics
	// futureSaid and doubtSaid are what was last logged about a record
	// from the future and about this member's clock, so each is said
	// once, not every round.
	futureSaid, doubtSaid string
	// seen is the name of the cluster's record as this member last
	// read it, and seenAt when it first did (see due); answered, the
	// last record from the future a backup of this member answered.
	seen, answered string
	seenAt         time.Time
	answeredFuture bool
}

// Uploader is an S3 bucket (see backup.NewS3).
type Uploader interface {
	Put(ctx context.Context, path string, m backup.Manifest) error
	List(ctx context.Context) ([]backup.Manifest, error)
	// Delete removes backup m, only if the bucket's copy is of m's
	// cluster.
	Delete(ctx context.Context, m backup.Manifest) error
	// ServerTime is the S3 server's clock.
	ServerTime(ctx context.Context) (time.Time, error)
	Where() string
}

// now is the member's clock. time.Now's readings carry the monotonic
// clock, so the time a record has stood (due) does not follow a step of
// the wall clock.
func (s *Service) now() time.Time {
	if s.clock != nil {
		return s.clock()
	}
	return time.Now()
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
	last, err := backup.LastBackup(ctx, cli)
	if err != nil {
		return fmt.Errorf("read the last backup: %w", err)
	}
	if last != nil && s.fromFuture(last) {
		s.futureRecord(last)
		s.setLast(nil)
	} else {
		s.setLast(last)
	}
	if !s.due(last) {
		return nil
	}
	lock, err := backup.TryLock(ctx, cli)
	if err != nil || lock == nil {
		return err // nil: another member is at it
	}
	defer lock.Release()
	// Under the lock, the record is read again: another member may have
	// just finished. prev is what it says, from the future or not: age
	// retention checks this member's clock against it.
	prev, err := backup.LastBackup(ctx, cli)
	if err != nil {
		return fmt.Errorf("read the last backup: %w", err)
	}
	if !s.due(prev) {
		if !s.fromFuture(prev) {
			s.setLast(prev)
		}
		return nil
	}
	inc, err := incarnation(ctx, cli)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	m, err := s.take(ctx, cli)
	if err != nil {
		s.fail("local")
		return err
	}
	m.Incarnation = inc
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
	if err := backup.WriteManifest(s.Dir, *m); err != nil {
		return err
	}
	// Retention runs before the record is written: a round is over, for
	// whoever reads the record, once its old backups are gone too.
	s.retain(ctx, m.ClusterID, m.Incarnation, m.Name, prev)
	b, _ := json.Marshal(m)
	if _, err := cli.Put(ctx, backup.RecordKey, string(b)); err != nil {
		return fmt.Errorf("record the backup: %w", err)
	}
	s.setLast(m)
	s.tookOver(prev, m)
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
func (s *Service) take(ctx context.Context, cli *clientv3.Client) (*backup.Manifest, error) {
	start := time.Now() // the duration is measured on the monotonic clock
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
	now := s.now().UTC()
	m := &backup.Manifest{
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

// due says whether the cluster's record m (nil: none) calls for a
// backup. How long a record has stood is measured on this member's own
// clock, from when it first saw it, never by comparing its date with
// this member's clock: a member whose clock is a month off, beside one
// that is right, would otherwise find every record of the other an
// interval old (or from the future) and the two would back up at every
// tick, and retention by count would then drop every older restore
// point. Only the first record a member sees after it starts is aged
// by its date (a member that boots after backups stopped backs up at
// once). A record from the future is answered by one backup, once.
func (s *Service) due(m *backup.Manifest) bool {
	if m == nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if m.Name != s.seen {
		first := s.seen == ""
		s.seen, s.seenAt = m.Name, now
		if age := now.Sub(m.Time); first && age > 0 {
			s.seenAt = now.Add(-min(age, s.interval()))
		}
	}
	if s.fromFuture(m) && !s.answeredFuture {
		// The first record from the future this member meets is
		// answered at once (a planted record must not delay a backup
		// by an interval); later ones, which a member whose clock runs
		// ahead writes again at each of its restarts, at the pace of
		// any record, or the two would trade backups at every restart.
		return s.answered != m.Name
	}
	return now.Sub(s.seenAt) >= s.interval()
}

// tookOver notes that backup m replaced the cluster's record prev: m is
// seen from now, and a record from the future, once answered by a
// backup, calls for no other.
func (s *Service) tookOver(prev, m *backup.Manifest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if prev != nil {
		s.answered = prev.Name
		if s.fromFuture(prev) {
			s.answeredFuture = true
		}
	}
	s.seen, s.seenAt = m.Name, s.now()
}

// fromFuture says whether record m is dated after this member's clock by
// more than backup.MaxSkew: then it does not count as the cluster's last backup.
func (s *Service) fromFuture(m *backup.Manifest) bool {
	return m.Time.Sub(s.now()) > backup.MaxSkew
}

// futureRecord counts a record from the future and logs it, once per
// record.
func (s *Service) futureRecord(m *backup.Manifest) {
	key := m.Name + " " + m.Time.String()
	s.mu.Lock()
	said := s.futureSaid == key
	s.futureSaid = key
	if !said {
		s.metrics.futureRecords++
	}
	s.mu.Unlock()
	if !said {
		s.Log("backup: the cluster's backup record %s (by %s) is dated %s, %s after this member's clock: a clock runs ahead (check NTP on the members) or a client wrote %s; it does not count: a backup follows (at once for the first such record this member meets, else once it has stood an interval)", m.Name, m.Member, m.Time.UTC().Format(time.RFC3339), m.Time.Sub(s.now()).Round(time.Second), backup.RecordKey)
	}
}

// clockDoubt says why this member's clock (now) cannot be trusted to
// date backups for age-based retention, or "" when it can. It must
// agree with the cluster's record read before this round (prev: not
// before it, and at most two intervals after it, as the record is
// rewritten every interval) and with the S3 server's clock (server, or
// serverErr when it could not be read) when there is a bucket. A lone
// clock, with neither to compare, is not trusted. kind names the doubt
// without its numbers, so a doubt is logged once while it lasts.
func clockDoubt(now time.Time, prev *backup.Manifest, interval time.Duration, haveS3 bool, server time.Time, serverErr error) (kind, why string) {
	switch {
	case prev == nil && !haveS3:
		return "alone", "there is no backup record of this cluster and no S3 server to check this member's clock against"
	case prev != nil && prev.Time.Sub(now) > backup.MaxSkew:
		return "record-ahead", fmt.Sprintf("the cluster's last backup record %s (by %s) is dated %s after this member's clock", prev.Name, prev.Member, prev.Time.Sub(now).Round(time.Second))
	case prev != nil && now.Sub(prev.Time) > 2*interval+backup.MaxSkew:
		return "record-behind", fmt.Sprintf("this member's clock is %s past the cluster's last backup record %s (by %s), more than two backup intervals: the clock may run ahead", now.Sub(prev.Time).Round(time.Second), prev.Name, prev.Member)
	case haveS3 && serverErr != nil:
		return "s3-unknown", fmt.Sprintf("the S3 server's time is unknown (%v)", serverErr)
	case haveS3 && now.Sub(server) > backup.MaxSkew:
		return "s3-ahead", fmt.Sprintf("this member's clock is %s ahead of the S3 server's", now.Sub(server).Round(time.Second))
	case haveS3 && server.Sub(now) > backup.MaxSkew:
		return "s3-behind", fmt.Sprintf("this member's clock is %s behind the S3 server's", server.Sub(now).Round(time.Second))
	}
	return "", ""
}

// ageLimit is the MaxAge retention uses this round: the configured one
// when this member's clock agrees with the cluster's last record (prev)
// and the S3 server's, else 0 (no deletion by age; said once).
func (s *Service) ageLimit(ctx context.Context, prev *backup.Manifest) time.Duration {
	maxAge := time.Duration(s.Config.MaxAgeSeconds) * time.Second
	if maxAge <= 0 {
		return 0
	}
	var server time.Time
	var serverErr error
	if s.S3 != nil {
		server, serverErr = s.S3.ServerTime(ctx)
	}
	kind, why := clockDoubt(s.now(), prev, s.interval(), s.S3 != nil, server, serverErr)
	s.mu.Lock()
	said := s.doubtSaid
	s.doubtSaid = kind
	s.mu.Unlock()
	switch {
	case kind != "" && kind != said:
		s.Log("backup: retention deletes no backup for its age (backup.maxAge) while this member's clock is in doubt: %s; retention by count (backup.retain) still runs. Check the members' clocks (NTP)", why)
	case kind == "" && said != "":
		s.Log("backup: this member's clock agrees with the cluster's backup record and the S3 server again; retention by age (backup.maxAge) resumes")
	}
	if kind != "" {
		return 0
	}
	return maxAge
}

// retain applies retention to this cluster's backups (clusterID) on the
// data disk and in the bucket. prev is the cluster's record read before
// this round.
func (s *Service) retain(ctx context.Context, clusterID, incarnation, just string, prev *backup.Manifest) {
	maxAge := s.ageLimit(ctx, prev)
	now := s.now()
	// The backup this round just verified is never a victim, whatever
	// else shares its cluster ID (clusters of an older etcdimg made
	// from one spec do).
	expired := func(ms []backup.Manifest) []backup.Manifest {
		return slices.DeleteFunc(backup.Expired(backup.Own(ms, clusterID, incarnation), s.Config.Retain, maxAge, now), func(m backup.Manifest) bool { return m.Name == just })
	}
	if ms, err := backup.List(s.Dir); err == nil {
		for _, m := range expired(ms) {
			os.Remove(filepath.Join(s.Dir, m.Name+".json"))
			os.Remove(filepath.Join(s.Dir, m.Name+".db"))
		}
	} else {
		s.Log("backup: retention on the data disk: %v", err)
	}
	if s.S3 != nil {
		ms, err := s.S3.List(ctx)
		if err != nil {
			s.Log("backup: retention in %s: %v", s.S3.Where(), err)
			return
		}
		for _, m := range expired(ms) {
			if err := s.S3.Delete(ctx, m); err != nil {
				s.Log("backup: retention in %s: %v", s.S3.Where(), err)
			}
		}
	}
}
