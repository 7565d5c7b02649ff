package maintd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"etcdimg/internal/backup"
	"etcdimg/internal/etcdtest"
	"etcdimg/internal/layout"
	"etcdimg/internal/maintain"
)

// logbook collects what the services log, in order.
type logbook struct {
	mu    sync.Mutex
	lines []string
}

func (l *logbook) logf(f string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(f, a...))
}

func (l *logbook) with(part string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.lines {
		if strings.Contains(s, part) {
			out = append(out, s)
		}
	}
	return out
}

func (l *logbook) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

// since is with(part) of the lines logged after the first mark.
func (l *logbook) since(mark int, part string) []string {
	l.mu.Lock()
	lines := slices.Clone(l.lines[mark:])
	l.mu.Unlock()
	var out []string
	for _, s := range lines {
		if strings.Contains(s, part) {
			out = append(out, s)
		}
	}
	return out
}

func (l *logbook) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// rig is a three-member embedded cluster with a small quota and each
// member's maintenance service.
type rig struct {
	t        *testing.T
	members  []etcdtest.Member
	services []*Service
	cli      *clientv3.Client
	log      *logbook
}

func newRig(t *testing.T, quota int64) *rig {
	ms := etcdtest.Cluster(t, 3, func(c *embed.Config) { c.QuotaBackendBytes = quota })
	r := &rig{t: t, members: ms, log: &logbook{}}
	var urls []string
	for _, m := range ms {
		urls = append(urls, m.URL)
		r.services = append(r.services, &Service{
			Member: m.Name, Endpoint: m.URL, Client: clientv3.Config{DialTimeout: 5 * time.Second, Logger: zap.NewNop()},
			Policy: maintain.Policy{FreePercent: 20}, Check: time.Second, BackupWithin: time.Hour,
			CatchUp: 30 * time.Second, Log: r.log.logf,
		})
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: urls, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	r.cli = cli
	return r
}

// rounds runs every member's Once in turn, n times, or until done says
// so after a round of all three.
func (r *rig) rounds(n int, done func() bool) {
	r.t.Helper()
	for range n {
		for _, s := range r.services {
			if err := s.Once(context.Background()); err != nil {
				r.t.Logf("%s: %v", s.Member, err)
			}
		}
		if done != nil && done() {
			return
		}
	}
}

// statuses is every member's database, as maintain reads it.
func (r *rig) statuses() map[string]*clientv3.StatusResponse {
	out := map[string]*clientv3.StatusResponse{}
	for _, m := range r.members {
		st, err := r.cli.Status(context.Background(), m.URL)
		if err != nil {
			r.t.Fatalf("status of %s: %v", m.Name, err)
		}
		out[m.Name] = st
	}
	return out
}

func (r *rig) leader() string {
	for n, st := range r.statuses() {
		if st.Leader == st.Header.MemberId {
			return n
		}
	}
	r.t.Fatal("no leader")
	return ""
}

func (r *rig) alarms() []*etcdserverpb.AlarmMember {
	a, err := r.cli.AlarmList(context.Background())
	if err != nil {
		r.t.Fatal(err)
	}
	return a.Alarms
}

// fill writes 64 KiB values under prefix until etcd answers "database
// space exceeded"; it returns how many it wrote.
func (r *rig) fill(prefix string) int {
	r.t.Helper()
	value := strings.Repeat("x", 64<<10)
	for i := 0; i < 2000; i++ {
		_, err := r.cli.Put(context.Background(), fmt.Sprintf("%s%04d", prefix, i), value)
		if errors.Is(err, rpctypes.ErrNoSpace) {
			return i
		}
		if err != nil {
			r.t.Fatal(err)
		}
	}
	r.t.Fatal("the quota never filled")
	return 0
}

// TestNoSpaceRecoversByItself: a real three-member cluster with a 4 MiB
// quota and a writer that fills it until etcd answers "database space
// exceeded". While history and free pages hold enough of it, rounds of
// every member's service compact, defragment and disarm, each database
// then under 90% of its quota, and the writer goes on. Once live data
// alone fills the quota, the rounds keep the alarm and say so (delete
// keys or grow the disk); once the keys are deleted, the members
// compact, defragment one at a time (followers first, the leader last
// after handing its leadership over) and disarm once, and writes resume;
// every write acknowledged before is still there.
func TestNoSpaceRecoversByItself(t *testing.T) {
	const quota = 4 << 20
	limit := int64(quota / 100 * maintain.DisarmBelowPercent)
	r := newRig(t, quota)
	ctx := context.Background()
	if _, err := r.cli.Put(ctx, "/kept", "acknowledged"); err != nil {
		t.Fatal(err)
	}
	n := 0
	for cycle := 1; ; cycle++ {
		n += r.fill(fmt.Sprintf("/fill/%d/", cycle))
		if len(r.alarms()) == 0 {
			t.Fatal("no alarm after filling the quota")
		}
		r.rounds(5, func() bool { return len(r.alarms()) == 0 })
		if len(r.alarms()) != 0 {
			t.Logf("live data filled the quota after %d fills, %d values", cycle, n)
			break
		}
		if cycle == 5 {
			t.Fatalf("the members disarmed after each of 5 fills; live data never filled the quota:\n%s", r.log)
		}
		for name, st := range r.statuses() {
			if st.DbSize >= limit {
				t.Errorf("fill %d: disarmed with %s's database at %d bytes, over %d", cycle, name, st.DbSize, limit)
			}
		}
	}
	r.rounds(3, nil)
	if len(r.alarms()) == 0 {
		t.Fatalf("disarmed while live data fills the quota:\n%s", r.log)
	}
	if said := r.log.with("NOSPACE stays: "); len(said) == 0 || !strings.Contains(said[len(said)-1], "live data") || !strings.Contains(said[len(said)-1], "delete keys") {
		t.Errorf("the live data was not named:\n%s", r.log)
	}
	leader := r.leader()
	mark := r.log.len()
	if _, err := r.cli.Delete(ctx, "/fill/", clientv3.WithPrefix()); err != nil {
		t.Fatalf("delete under NOSPACE: %v", err)
	}
	start := time.Now()
	r.rounds(10, func() bool { return len(r.alarms()) == 0 })
	if a := r.alarms(); len(a) != 0 {
		t.Fatalf("still %v after the keys were deleted:\n%s", a, r.log)
	}
	t.Logf("disarmed %s after the delete:\n%s", time.Since(start).Round(time.Millisecond), r.log)
	defrags := r.log.since(mark, ": database ")
	if len(defrags) == 0 {
		t.Fatalf("nobody defragmented:\n%s", r.log)
	}
	// The leader, if it was defragmented, came last, having handed over.
	for i, l := range defrags {
		if strings.HasPrefix(l, "defrag: "+leader+": ") && i != len(defrags)-1 {
			t.Errorf("the leader %s was defragmented before a follower:\n%s", leader, strings.Join(defrags, "\n"))
		}
	}
	if d := r.log.since(mark, "NOSPACE disarmed by "); len(d) != 1 {
		t.Errorf("disarmed %d times:\n%s", len(d), r.log)
	}
	for name, st := range r.statuses() {
		if st.DbSize >= limit {
			t.Errorf("%s's database is %d bytes after recovery", name, st.DbSize)
		}
	}
	if _, err := r.cli.Put(ctx, "/after", "x"); err != nil {
		t.Fatalf("writes do not resume: %v", err)
	}
	if g, err := r.cli.Get(ctx, "/kept"); err != nil || len(g.Kvs) != 1 || string(g.Kvs[0].Value) != "acknowledged" {
		t.Errorf("/kept: %v, %v", g, err)
	}
	// Each member's next round reads the alarms again.
	r.rounds(1, nil)
	var m bytes.Buffer
	for _, s := range r.services {
		s.WriteMetrics(&m)
	}
	if strings.Count(m.String(), `etcdimg_alarm_active{alarm="NOSPACE"} 0`) != 3 {
		t.Errorf("metrics after recovery:\n%s", m.String())
	}
}

// TestScheduledDefragWaitsForItsConditions: free pages over the policy's
// share of the quota on every member. No member is defragmented without
// a recent verified backup, nor while an operation holds the cluster,
// each saying why once; then every member is, one at a time under the
// backup lock, the leader last after handing its leadership over, and
// each database shrinks. The metrics count it.
func TestScheduledDefragWaitsForItsConditions(t *testing.T) {
	const quota = 64 << 20
	r := newRig(t, quota)
	ctx := context.Background()
	value := strings.Repeat("y", 64<<10)
	for i := range 300 {
		if _, err := r.cli.Put(ctx, fmt.Sprintf("/churn/%04d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := r.cli.Delete(ctx, "/churn/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	// Every member compacts in its own time: wait until each shows its
	// free pages.
	deadline := time.Now().Add(30 * time.Second)
	before := r.statuses()
	for name := range before {
		for before[name].DbSize-before[name].DbSizeInUse < quota/5 {
			if time.Now().After(deadline) {
				t.Fatalf("%s shows no free pages: %+v", name, before[name])
			}
			// bbolt counts freed pages as free once a later write
			// has committed.
			if _, err := r.cli.Put(ctx, "/tick", "x"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			before = r.statuses()
		}
	}
	leader := r.leader()

	r.rounds(1, nil)
	if d := r.log.with(": database "); len(d) != 0 {
		t.Fatalf("defragmented without a backup: %v", d)
	}
	if w := r.log.with("waits: the cluster has no verified backup yet"); len(w) != 3 {
		t.Errorf("want each member to say once it waits for a backup:\n%s", r.log)
	}
	// Another cluster's record (a restored copy's, say) does not count.
	rec, _ := json.Marshal(backup.Manifest{Name: "c-rev1", ClusterID: "ffff", Time: time.Now(), Revision: 1})
	put, err := r.cli.Put(ctx, backup.RecordKey, string(rec))
	if err != nil {
		t.Fatal(err)
	}
	r.rounds(1, nil)
	if d := r.log.with(": database "); len(d) != 0 {
		t.Fatalf("defragmented after another cluster's backup: %v", d)
	}
	rec, _ = json.Marshal(backup.Manifest{Name: "c-rev1", ClusterID: fmt.Sprintf("%x", put.Header.ClusterId), Time: time.Now(), Revision: 1})
	if _, err := r.cli.Put(ctx, backup.RecordKey, string(rec)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.cli.Put(ctx, layout.OperationLockKey, `{"op":"upgrade"}`); err != nil {
		t.Fatal(err)
	}
	r.rounds(2, nil)
	if d := r.log.with(": database "); len(d) != 0 {
		t.Fatalf("defragmented while an operation holds the cluster: %v", d)
	}
	if w := r.log.with(`an operation holds the cluster ({"op":"upgrade"})`); len(w) != 3 {
		t.Errorf("want each member to say once it waits for the operation:\n%s", r.log)
	}
	if _, err := r.cli.Delete(ctx, layout.OperationLockKey); err != nil {
		t.Fatal(err)
	}
	// A backup holds the backup lock: nobody defragments meanwhile.
	sess, err := concurrency.NewSession(r.cli, concurrency.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	mu := concurrency.NewMutex(sess, backup.LockKey)
	if err := mu.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	r.rounds(2, nil)
	if d := r.log.with(": database "); len(d) != 0 {
		t.Fatalf("defragmented while a backup holds the lock: %v", d)
	}
	mu.Unlock(ctx)
	sess.Close()
	r.rounds(4, func() bool { return len(r.log.with(": database ")) == 3 })
	defrags := r.log.with(": database ")
	if len(defrags) != 3 {
		t.Fatalf("%d defragmentations:\n%s", len(defrags), r.log)
	}
	if !strings.HasPrefix(defrags[2], "defrag: "+leader+": ") {
		t.Errorf("the leader %s was not last:\n%s", leader, strings.Join(defrags, "\n"))
	}
	if h := r.log.with("defrag: " + leader + " handed its leadership over to "); len(h) != 1 {
		t.Errorf("the leader did not hand over first:\n%s", r.log)
	}
	if g, err := r.cli.Get(ctx, layout.OperationLockKey); err != nil || len(g.Kvs) != 0 {
		t.Errorf("the operation lock outlived the defragmentations: %v, %v", g, err)
	}
	after := r.statuses()
	for name := range after {
		if after[name].DbSize >= before[name].DbSize-quota/5 {
			t.Errorf("%s: database %d → %d bytes", name, before[name].DbSize, after[name].DbSize)
		}
	}
	var m bytes.Buffer
	for _, s := range r.services {
		s.WriteMetrics(&m)
	}
	if !strings.Contains(m.String(), "etcdimg_defrag_failures_total 0") || strings.Contains(m.String(), "etcdimg_defrag_reclaimed_bytes_total 0\n") {
		t.Errorf("metrics:\n%s", m.String())
	}
	t.Logf("%s", r.log)
}

// TestTheDefragHoldsTheOperationLock: a member's scheduled
// defragmentation takes the operator's operation lock on its session's
// lease, naming itself, so that an upgrade or a roll starting meanwhile
// is refused; a second taker is told who holds it; the lock goes with
// the session.
func TestTheDefragHoldsTheOperationLock(t *testing.T) {
	r := newRig(t, 64<<20)
	ctx := context.Background()
	s := r.services[1]
	sess, err := concurrency.NewSession(r.cli, concurrency.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	if held, err := s.takeOperationLock(ctx, r.cli, sess.Lease()); err != nil || held != "" {
		t.Fatalf("take: %q, %v", held, err)
	}
	held, err := r.services[0].takeOperationLock(ctx, r.cli, clientv3.NoLease)
	if err != nil || !strings.Contains(held, `"op":"scheduled defragmentation of etcd-2","by":"etcd-2"`) {
		t.Fatalf("second take: %q, %v", held, err)
	}
	sess.Close()
	if g, err := r.cli.Get(ctx, layout.OperationLockKey); err != nil || len(g.Kvs) != 0 {
		t.Errorf("the lock outlived its session: %v, %v", g, err)
	}
}
