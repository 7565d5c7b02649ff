// Package maintd is a member's own care of its database, which the
// backup service (etcd-backup) runs beside the backups:
//
//   - Scheduled defragmentation. When this member's free pages reach the
//     spec's share of its quota (maintain.Policy), and only while every
//     member answers, no alarm stands, no operator's operation holds the
//     cluster and a verified backup is recent, the member takes the
//     cluster's backup lock (one member at a time, and never during a
//     backup), defragments itself and waits until it has caught up
//     before letting go. The leader goes last: it waits while a follower
//     needs a defragmentation, then hands its leadership over first.
//   - NOSPACE recovery. While the alarm stands, nobody can take a lock (a
//     lease is a write), so the members follow one order instead
//     (maintain.NoSpaceNext: followers first, one at a time, none while
//     a member does not answer): history is compacted to the current
//     revision, each member whose free pages keep it over its limit
//     defragments itself in turn, and the alarm is disarmed once every
//     member's database is under maintain.DisarmBelowPercent of its
//     quota. When live data alone keeps a member over, the alarm stays
//     and the console says to delete keys or grow the data disk; once
//     keys are deleted (etcd takes deletes under the alarm), the next
//     rounds compact, defragment and disarm.
//
// Its metrics (etcdimg_defrag_*, etcdimg_alarm_active) are served with
// the backups' on the node's metrics port.
package maintd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdimg/internal/backup"
	"etcdimg/internal/maintain"
)

// Service is one member's maintenance.
type Service struct {
	Member   string
	Endpoint string // this member's client URL
	// Client is the TLS (and timeouts) for this member's client URL and
	// its peers'; its endpoints are ignored.
	Client clientv3.Config
	Policy maintain.Policy
	// Check is how often a round runs.
	Check time.Duration
	// BackupWithin is how old, at most, the cluster's last verified
	// backup may be for a scheduled defragmentation to start.
	BackupWithin time.Duration
	// DefragTimeout bounds one defragmentation (10 minutes when 0).
	DefragTimeout time.Duration
	// CatchUp bounds the wait, after a defragmentation, for this member
	// to apply what the cluster committed meanwhile (a minute when 0).
	CatchUp time.Duration
	Log     func(format string, args ...any)

	// clock is the member's clock (nil: time.Now).
	clock func() time.Time

	mu      sync.Mutex
	metrics metrics
	// said is what was last said on each topic, so that a state that
	// lasts is said once, not every round.
	said map[string]string
}

type metrics struct {
	started, lastSuccess time.Time
	failures             int
	reclaimed            int64
	// alarms are the alarms etcd holds for this member, from the last
	// round that could read them.
	alarms map[string]bool
}

func (s *Service) now() time.Time {
	if s.clock != nil {
		return s.clock()
	}
	return time.Now()
}

// say logs what on topic unless it is what was said last on it; "" ends
// the topic, so that the same state said again later is logged again.
func (s *Service) say(topic, what string) { s.sayAs(topic, what, what) }

// sayAs logs what on topic unless the state it says, key, is the one
// said last on it (what may carry figures that change while the state
// lasts).
func (s *Service) sayAs(topic, key, what string) {
	s.mu.Lock()
	if s.said == nil {
		s.said = map[string]string{}
	}
	old := s.said[topic]
	s.said[topic] = key
	s.mu.Unlock()
	if key != "" && key != old && s.Log != nil {
		s.Log("%s", what)
	}
}

// Run runs a round every Check until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	s.mu.Lock()
	s.metrics.started = s.now()
	s.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.Check):
		}
		if err := s.Once(ctx); err != nil && ctx.Err() == nil {
			s.say("round", "maintenance: "+err.Error())
		} else {
			s.say("round", "")
		}
	}
}

// client is a client of url alone.
func (s *Service) client(url string) (*clientv3.Client, error) {
	cfg := s.Client
	cfg.Endpoints = []string{url}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return clientv3.New(cfg)
}

// maxLag is how far, in raft entries, a member's applied index may be
// behind its committed index for it to count as answering: more, and it
// is catching up (a member's Status waits for its defragmentation, then
// answers far behind).
const maxLag = 50

// view is what a round sees: every member's database, the alarms, and
// this member.
type view struct {
	members []maintain.Member
	urls    map[string]string
	alarms  []*etcdserverpb.AlarmMember
	me      maintain.Member
	// leaderIndex is the leader's raft index, as the leader reported it.
	leaderIndex uint64
}

func (v *view) has(t etcdserverpb.AlarmType) bool {
	return slices.ContainsFunc(v.alarms, func(a *etcdserverpb.AlarmMember) bool { return a.Alarm == t })
}

// allAnswer says which member does not answer, if one does not.
func (v *view) allAnswer() error {
	for _, m := range v.members {
		if m.Err != nil {
			return fmt.Errorf("%s does not answer (%v)", m.Name, m.Err)
		}
	}
	return nil
}

// observe reads the member list, every member's status (in parallel,
// each within 5 s) and the alarms.
func (s *Service) observe(ctx context.Context, cli *clientv3.Client) (*view, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	list, err := cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("member list: %w", err)
	}
	v := &view{members: make([]maintain.Member, len(list.Members)), urls: map[string]string{}}
	index := make([]uint64, len(list.Members)) // each member's raft index
	var wg sync.WaitGroup
	for i, m := range list.Members {
		v.members[i] = maintain.Member{Name: m.Name, ID: m.ID, Learner: m.IsLearner}
		if m.Name == "" || len(m.ClientURLs) == 0 {
			v.members[i].Name = fmt.Sprintf("%x", m.ID)
			v.members[i].Err = errors.New("not started")
			continue
		}
		v.urls[m.Name] = m.ClientURLs[0]
		wg.Add(1)
		go func(mm *maintain.Member, index *uint64, url string) {
			defer wg.Done()
			c, err := s.client(url)
			if err != nil {
				mm.Err = err
				return
			}
			defer c.Close()
			sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
			defer scancel()
			r, err := c.Status(sctx, url)
			if err != nil {
				mm.Err = err
				return
			}
			mm.Leader = r.Leader != 0 && r.Leader == r.Header.MemberId
			mm.Applied, mm.DBSize, mm.InUse, mm.Quota = r.RaftAppliedIndex, r.DbSize, r.DbSizeInUse, r.DbSizeQuota
			*index = r.RaftIndex
			if r.RaftIndex > r.RaftAppliedIndex+maxLag {
				// Just defragmented (Status waits for a running
				// defragmentation), or otherwise behind: busy.
				mm.Err = fmt.Errorf("catching up: applied index %d of %d", r.RaftAppliedIndex, r.RaftIndex)
			}
		}(&v.members[i], &index[i], m.ClientURLs[0])
	}
	wg.Wait()
	for i, m := range v.members {
		if m.Leader {
			v.leaderIndex = max(v.leaderIndex, index[i])
		}
	}
	sort.SliceStable(v.members, func(i, j int) bool { return v.members[i].Name < v.members[j].Name })
	i := slices.IndexFunc(v.members, func(m maintain.Member) bool { return m.Name == s.Member })
	if i < 0 {
		return nil, fmt.Errorf("%s is not in the member list", s.Member)
	}
	v.me = v.members[i]
	al, err := cli.AlarmList(ctx)
	if err != nil {
		return nil, fmt.Errorf("alarm list: %w", err)
	}
	v.alarms = al.Alarms
	s.setAlarms(v.me.ID, v.alarms)
	return v, nil
}

// Once runs one round: NOSPACE recovery while the alarm stands, else a
// scheduled defragmentation of this member if it needs one.
func (s *Service) Once(ctx context.Context) error {
	cli, err := s.client(s.Endpoint)
	if err != nil {
		return err
	}
	defer cli.Close()
	v, err := s.observe(ctx, cli)
	if err != nil {
		return err
	}
	switch {
	case v.has(etcdserverpb.AlarmType_CORRUPT):
		s.say("state", "maintenance: etcd's CORRUPT alarm stands: no defragmentation or disarming until an operator has seen to it (`etcdimg alarms`)")
		return nil
	case v.has(etcdserverpb.AlarmType_NOSPACE):
		return s.recoverNoSpace(ctx, cli, v)
	}
	s.say("nospace", "")
	ok, why := s.Policy.Needs(v.me)
	if !ok {
		s.say("state", "")
		return nil
	}
	return s.scheduled(ctx, cli, v, why)
}

// scheduled defragments this member under the backup lock, if every
// condition holds (see the package's comment); else it says why not, once.
func (s *Service) scheduled(ctx context.Context, cli *clientv3.Client, v *view, why string) error {
	wait := func(reason string) error {
		s.sayAs("state", reason, fmt.Sprintf("defrag: %s needs it (%s), and waits: %s", s.Member, why, reason))
		return nil
	}
	if err := v.allAnswer(); err != nil {
		return wait(err.Error())
	}
	if len(v.alarms) > 0 {
		return wait("an alarm stands")
	}
	if op, err := operationHeld(ctx, cli); err != nil {
		return err
	} else if op != "" {
		return wait("an operation holds the cluster (" + op + ")")
	}
	if reason, err := s.backupStale(ctx, cli); err != nil {
		return err
	} else if reason != "" {
		return wait(reason)
	}
	if v.me.Leader && slices.ContainsFunc(v.members, func(m maintain.Member) bool {
		ok, _ := s.Policy.Needs(m)
		return ok && m.Name != s.Member
	}) {
		return wait("it leads, and goes after the followers that need one")
	}
	lock, err := backup.TryLock(ctx, cli)
	if err != nil {
		return fmt.Errorf("defrag: %w", err)
	}
	if lock == nil {
		return nil // a backup, or another member's defragmentation
	}
	defer lock.Release()
	// The operator's operation lock too, on the same lease: an upgrade,
	// a roll or `etcdimg defrag` that starts now is refused, naming this
	// defragmentation, rather than take a second member down beside it.
	if op, err := s.takeOperationLock(ctx, cli, lock.Lease()); err != nil {
		return err
	} else if op != "" {
		return wait("an operation holds the cluster (" + op + ")")
	}
	// Release revokes the lease, and both locks go with it.
	// Under the locks, everything is read again: another member may just
	// have finished, and taken this one's place as the one that leads.
	if v, err = s.observe(ctx, cli); err != nil {
		return err
	}
	if ok, _ := s.Policy.Needs(v.me); !ok {
		return nil
	}
	if err := v.allAnswer(); err != nil {
		return wait(err.Error())
	}
	if len(v.alarms) > 0 {
		return wait("an alarm stands")
	}
	s.say("state", "")
	return s.defragSelf(ctx, cli, v, why)
}

// recoverNoSpace is a round under the NOSPACE alarm.
func (s *Service) recoverNoSpace(ctx context.Context, cli *clientv3.Client, v *view) error {
	if op, err := operationHeld(ctx, cli); err != nil {
		return err
	} else if op != "" {
		s.say("nospace", "NOSPACE: an operation holds the cluster ("+op+"); the members recover once it is over")
		return nil
	}
	rev, err := compact(ctx, cli)
	if err != nil {
		return fmt.Errorf("NOSPACE: %w", err)
	}
	if v, err = s.observe(ctx, cli); err != nil {
		return err
	}
	if !v.has(etcdserverpb.AlarmType_NOSPACE) {
		return nil
	}
	blockers := maintain.NoSpaceBlockers(v.members)
	if len(blockers) == 0 {
		return s.disarm(ctx, cli, v, rev)
	}
	if next, ok := maintain.NoSpaceNext(v.members); ok {
		if next.Name != s.Member {
			s.sayAs("nospace", "next "+next.Name, fmt.Sprintf("NOSPACE: history compacted to revision %d; %s is defragmented next, then the members after it in turn, the leader last", rev, next.Name))
			return nil
		}
		return s.defragSelf(ctx, cli, v, fmt.Sprintf("NOSPACE: %s of its %s database in use, under %d%% of its quota once defragmented", maintain.Human(v.me.InUse), maintain.Human(v.me.DBSize), maintain.DisarmBelowPercent))
	}
	var parts, key []string
	for _, b := range blockers {
		switch b.Kind {
		case maintain.Unknown:
			parts = append(parts, fmt.Sprintf("%s does not answer", b.Name))
		case maintain.LiveData:
			parts = append(parts, fmt.Sprintf("%s's live data is %s of its %s quota", b.Name, maintain.Human(b.InUse), maintain.Human(b.Quota)))
		default:
			continue
		}
		key = append(key, fmt.Sprint(b.Name, b.Kind))
	}
	s.sayAs("nospace", strings.Join(key, ","), fmt.Sprintf("NOSPACE stays: %s, over %d%%: delete keys (etcd takes deletes under the alarm) or grow the data disk; the members compact, defragment and disarm once it is under", strings.Join(parts, "; "), maintain.DisarmBelowPercent))
	return nil
}

// disarm disarms every NOSPACE alarm: every member's database is under
// its limit.
func (s *Service) disarm(ctx context.Context, cli *clientv3.Client, v *view, rev int64) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for _, a := range v.alarms {
		if a.Alarm != etcdserverpb.AlarmType_NOSPACE {
			continue
		}
		if _, err := cli.AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: a.MemberID, Alarm: a.Alarm}); err != nil {
			return fmt.Errorf("NOSPACE: disarm: %w", err)
		}
	}
	var sizes []string
	for _, m := range v.members {
		sizes = append(sizes, fmt.Sprintf("%s %s of %s", m.Name, maintain.Human(m.DBSize), maintain.Human(m.Quota)))
	}
	s.say("nospace", fmt.Sprintf("NOSPACE disarmed by %s: history compacted to revision %d, every member's database under %d%% of its quota (%s); writes resume", s.Member, rev, maintain.DisarmBelowPercent, strings.Join(sizes, ", ")))
	s.setAlarms(v.me.ID, nil)
	return nil
}

// defragSelf defragments this member: its leadership handed over first,
// then the defragmentation, then the wait until it has applied what the
// cluster committed meanwhile.
func (s *Service) defragSelf(ctx context.Context, cli *clientv3.Client, v *view, why string) error {
	if v.me.Leader {
		if err := s.handOver(ctx, cli, v); err != nil {
			s.fail()
			return fmt.Errorf("defrag: %s: %w", s.Member, err)
		}
	}
	timeout := s.DefragTimeout
	if timeout == 0 {
		timeout = 10 * time.Minute
	}
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, timeout)
	_, err := cli.Defragment(dctx, s.Endpoint)
	cancel()
	took := time.Since(start)
	if err != nil {
		s.fail()
		return fmt.Errorf("defrag: %s failed after %s (bound %s): %w", s.Member, took.Round(time.Millisecond), timeout, err)
	}
	// What the cluster committed while this member was defragmented:
	// the leader's index now (the leader may have changed).
	target := v.leaderIndex
	if now, err := s.observe(ctx, cli); err == nil {
		target = max(target, now.leaderIndex)
	}
	after, index, err := s.caughtUp(ctx, cli, target)
	if err != nil {
		s.fail()
		return fmt.Errorf("defrag: %s: %w", s.Member, err)
	}
	reclaimed := v.me.DBSize - after.DbSize
	s.mu.Lock()
	s.metrics.lastSuccess = s.now()
	s.metrics.reclaimed += max(reclaimed, 0)
	s.mu.Unlock()
	s.say("defrag", fmt.Sprintf("defrag: %s: database %s (%s in use) → %s (%s in use), %s reclaimed in %s, applied index %d; because %s",
		s.Member, maintain.Human(v.me.DBSize), maintain.Human(v.me.InUse), maintain.Human(after.DbSize), maintain.Human(after.DbSizeInUse),
		maintain.Human(reclaimed), took.Round(time.Millisecond), index, why))
	return nil
}

// handOver moves the leadership from this member to the follower that
// has applied the most, and waits (10 s at most) until it has moved.
func (s *Service) handOver(ctx context.Context, cli *clientv3.Client, v *view) error {
	var to *maintain.Member
	for i, m := range v.members {
		if m.Name == s.Member || m.Learner || m.Err != nil {
			continue
		}
		if to == nil || m.Applied > to.Applied {
			to = &v.members[i]
		}
	}
	if to == nil {
		return nil // one member: nobody to hand over to
	}
	mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.MoveLeader(mctx, to.ID); err != nil {
		return fmt.Errorf("move the leadership to %s: %w", to.Name, err)
	}
	for {
		r, err := cli.Status(mctx, s.Endpoint)
		if err == nil && r.Leader != 0 && r.Leader != r.Header.MemberId {
			s.say("defrag", fmt.Sprintf("defrag: %s handed its leadership over to %s first", s.Member, to.Name))
			return nil
		}
		select {
		case <-mctx.Done():
			return fmt.Errorf("the leadership did not move to %s within 10s", to.Name)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// caughtUp waits until this member answers again and has applied at
// least index (what the leader had before), within CatchUp; it returns
// its status then.
func (s *Service) caughtUp(ctx context.Context, cli *clientv3.Client, index uint64) (*clientv3.StatusResponse, uint64, error) {
	bound := s.CatchUp
	if bound == 0 {
		bound = time.Minute
	}
	cctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	var last error
	for {
		r, err := cli.Status(cctx, s.Endpoint)
		switch {
		case err != nil:
			last = err
		case r.RaftAppliedIndex >= index:
			return r, r.RaftAppliedIndex, nil
		default:
			last = fmt.Errorf("applied index %d, the leader's was %d", r.RaftAppliedIndex, index)
		}
		select {
		case <-cctx.Done():
			return nil, 0, fmt.Errorf("not caught up within %s after its defragmentation: %v", bound, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// backupStale says why the cluster's last verified backup is not recent
// enough for a scheduled defragmentation ("" when it is).
func (s *Service) backupStale(ctx context.Context, cli *clientv3.Client) (string, error) {
	last, err := backup.LastBackup(ctx, cli)
	if err != nil {
		return "", fmt.Errorf("defrag: read the last backup: %w", err)
	}
	now := s.now()
	switch {
	case last == nil:
		return "the cluster has no verified backup yet", nil
	case last.Time.After(now.Add(backup.MaxSkew)):
		return fmt.Sprintf("the last backup's record (%s) is dated after this member's clock; waiting for one this member can date", last.Time.Format(time.RFC3339)), nil
	case now.Sub(last.Time) > s.BackupWithin:
		return fmt.Sprintf("the last verified backup (%s) is older than %s", last.Time.Format(time.RFC3339), s.BackupWithin), nil
	}
	return "", nil
}

// takeOperationLock takes the cluster's operation lock on lease for
// this member's scheduled defragmentation; when another holds it, it
// returns the holder (the key's value) and takes nothing.
func (s *Service) takeOperationLock(ctx context.Context, cli *clientv3.Client, lease clientv3.LeaseID) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	held, err := maintain.TakeOperationLock(ctx, cli, lease, maintain.Operation{Op: "scheduled defragmentation of " + s.Member, By: s.Member, Since: s.now().UTC().Truncate(time.Second)})
	if err != nil {
		return "", fmt.Errorf("defrag: %w", err)
	}
	return held, nil
}

// operationHeld names the operation that holds the cluster's operation
// lock, if one does (a read, which a full database still serves).
func operationHeld(ctx context.Context, cli *clientv3.Client) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return maintain.OperationHolder(ctx, cli)
}

// compact compacts the cluster's history to the current revision, the
// first thing to give up under NOSPACE, within 5 minutes.
func compact(ctx context.Context, cli *clientv3.Client) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	return maintain.CompactToCurrent(ctx, cli)
}

func (s *Service) fail() {
	s.mu.Lock()
	s.metrics.failures++
	s.mu.Unlock()
}

// setAlarms records the alarms etcd holds for the member id.
func (s *Service) setAlarms(id uint64, alarms []*etcdserverpb.AlarmMember) {
	m := map[string]bool{}
	for _, a := range alarms {
		// MemberID 0: a CORRUPT alarm for the whole cluster (no
		// majority agreed), which holds for every member.
		if a.MemberID == id || a.MemberID == 0 {
			m[a.Alarm.String()] = true
		}
	}
	s.mu.Lock()
	s.metrics.alarms = m
	s.mu.Unlock()
}

// WriteMetrics writes the maintenance metrics in Prometheus' text format
// (render's alert rules and dashboard read them): defragmentation
// failures and bytes reclaimed, the last success (before the first, when
// the service started, so that a new member does not alert), and each
// alarm etcd holds for this member (NOSPACE and CORRUPT always present).
func (s *Service) WriteMetrics(w io.Writer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	last := s.metrics.lastSuccess
	if last.IsZero() {
		last = s.metrics.started
	}
	fmt.Fprintf(w, "# HELP etcdimg_defrag_failures_total Defragmentations of this member that failed.\n# TYPE etcdimg_defrag_failures_total counter\netcdimg_defrag_failures_total %d\n", s.metrics.failures)
	fmt.Fprintf(w, "# HELP etcdimg_defrag_reclaimed_bytes_total What this member's defragmentations gave back.\n# TYPE etcdimg_defrag_reclaimed_bytes_total counter\netcdimg_defrag_reclaimed_bytes_total %d\n", s.metrics.reclaimed)
	fmt.Fprintf(w, "# HELP etcdimg_defrag_last_success_timestamp_seconds When this member was last defragmented (Unix time); before the first, when the service started.\n# TYPE etcdimg_defrag_last_success_timestamp_seconds gauge\netcdimg_defrag_last_success_timestamp_seconds %d\n", last.Unix())
	names := []string{"CORRUPT", "NOSPACE"}
	for n := range s.metrics.alarms {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	fmt.Fprintf(w, "# HELP etcdimg_alarm_active 1 while etcd holds the alarm for this member.\n# TYPE etcdimg_alarm_active gauge\n")
	for _, n := range names {
		v := 0
		if s.metrics.alarms[n] {
			v = 1
		}
		fmt.Fprintf(w, "etcdimg_alarm_active{alarm=%q} %d\n", n, v)
	}
}
