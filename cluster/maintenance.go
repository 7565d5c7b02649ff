package cluster

// Maintenance from the operator's machine (`etcdimg alarms`, `etcdimg
// defrag`): the cluster's alarms, disarmed only once their cause is
// gone, and defragmentation one member at a time, followers first and
// the leader last after its leadership moved, under the operation lock.
// The members' own scheduled defragmentation and NOSPACE recovery are
// not here: they run in the image.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"etcdimg/cluster/health"
	"etcdimg/internal/maintain"
)

// Alarm is one of the cluster's active alarms.
type Alarm struct {
	// Member names the member that raised it (or that it was raised
	// for), gives its ID in hex when that member is no longer listed
	// (removed or replaced: etcd keeps an alarm until it is disarmed,
	// whoever raised it), or is "the cluster" for ID 0: a CORRUPT alarm
	// where no majority of members agreed on a hash.
	Member string
	ID     uint64
	Type   etcdserverpb.AlarmType // NOSPACE, CORRUPT
	Listed bool                   // the member is in the member list
}

func (a Alarm) String() string { return a.Member + ": alarm " + a.Type.String() }

// Remedy says what the operator does about a.
func (a Alarm) Remedy() string {
	switch {
	case a.Type == etcdserverpb.AlarmType_NOSPACE:
		return "the database reached its quota and the cluster takes no writes: delete keys, then `etcdimg defrag --compact` and `etcdimg alarms --disarm`; if live data alone fills the quota, grow the data disk"
	case a.Type == etcdserverpb.AlarmType_CORRUPT && a.ID == 0:
		return "etcd found members whose data differ with no majority agreeing, so it cannot tell which are damaged, and the cluster takes no writes (it still serves reads): restore the cluster from a verified backup (`etcdimg restore`)"
	case a.Type == etcdserverpb.AlarmType_CORRUPT && a.Listed:
		return fmt.Sprintf("its data differs from its peers' and the cluster takes no writes (it still serves reads, from %s too); etcd refuses the lease the cluster's operation lock needs while the alarm stands: power %s off first (`etcdimg stop %s`, or the machine's own power; the leader re-raises the alarm within a minute while it answers), then disarm it by hand (`etcdimg etcdctl -- alarm disarm`) and `etcdimg replace %s` to heal it from its peers", a.Member, a.Member, a.Member, a.Member)
	case a.Type == etcdserverpb.AlarmType_CORRUPT:
		return "raised by a member that is no longer in the cluster: `etcdimg alarms --disarm` clears it"
	}
	return "see etcd's documentation of alarms"
}

// Alarms lists the cluster's active alarms (one request: etcd keeps them
// for the whole cluster, through raft), each with the name of the member
// that raised it, by member and type.
func (e *Etcd) Alarms(ctx context.Context) ([]Alarm, error) {
	cli, err := e.Client()
	if err != nil {
		return nil, fmt.Errorf("alarm list: %w", err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cli.AlarmList(ctx)
	if err != nil {
		return nil, fmt.Errorf("alarm list: %w", err)
	}
	if len(resp.Alarms) == 0 {
		return nil, nil
	}
	list, err := cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("member list: %w", err)
	}
	names := map[uint64]string{}
	for _, m := range list.Members {
		names[m.ID] = m.Name
	}
	var out []Alarm
	for _, a := range resp.Alarms {
		name, listed := names[a.MemberID]
		switch {
		case a.MemberID == 0:
			name = "the cluster" // etcd could not tell which member
		case name == "":
			name = fmt.Sprintf("%x", a.MemberID) // gone, or never started
		}
		out = append(out, Alarm{Member: name, ID: a.MemberID, Type: a.Alarm, Listed: listed})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Member != out[j].Member {
			return out[i].Member < out[j].Member
		}
		return out[i].Type < out[j].Type
	})
	return out, nil
}

// AlarmsLine is `etcdimg status`'s line about the cluster's alarms.
func (e *Etcd) AlarmsLine(ctx context.Context) string {
	alarms, err := e.Alarms(ctx)
	switch {
	case err != nil:
		return "alarms: unknown (etcd: " + err.Error() + ")"
	case len(alarms) == 0:
		return "alarms: none"
	}
	var s []string
	for _, a := range alarms {
		s = append(s, a.String())
	}
	return "alarms: " + strings.Join(s, ", ") + " (`etcdimg alarms` says what to do)"
}

// DisarmBelowPercent is how full, at most, every member's database may be
// (of its quota) for NOSPACE to be disarmed (maintain's rule, which the
// members' own recovery follows too).
const DisarmBelowPercent = maintain.DisarmBelowPercent

// Disarm disarms the cluster's alarms once their cause is gone, all or
// none: NOSPACE once every member's database is under DisarmBelowPercent
// of its quota; CORRUPT only of a member that is no longer in the
// cluster (a listed one is replaced first; one of the whole cluster
// never). It returns what it disarmed
// (nothing when no alarm is active), or, having disarmed nothing, why.
func (e *Etcd) Disarm(ctx context.Context) ([]Alarm, error) {
	alarms, err := e.Alarms(ctx)
	if err != nil {
		return nil, fmt.Errorf("alarms --disarm: %w", err)
	}
	if len(alarms) == 0 {
		return nil, nil
	}
	if err := disarmable(alarms, e.Statuses(ctx, 5*time.Second)); err != nil {
		return nil, fmt.Errorf("alarms --disarm: refused, nothing disarmed: %w", err)
	}
	cli, err := e.Client()
	if err != nil {
		return nil, fmt.Errorf("alarms --disarm: %w", err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	var done []Alarm
	for _, a := range alarms {
		if _, err := cli.AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: a.ID, Alarm: a.Type}); err != nil {
			return done, fmt.Errorf("alarms --disarm: %s: %w", a, err)
		}
		done = append(done, a)
	}
	return done, nil
}

// disarmable says why alarms may not be disarmed yet, given every
// member's status (sts, one per member of the spec), if they may not.
func disarmable(alarms []Alarm, sts []MemberStatus) error {
	var why []string
	nospace := false
	for _, a := range alarms {
		switch a.Type {
		case etcdserverpb.AlarmType_NOSPACE:
			nospace = true
		case etcdserverpb.AlarmType_CORRUPT:
			if a.ID == 0 {
				why = append(why, "members' data differ with no majority agreeing (CORRUPT for the whole cluster): restore the cluster from a verified backup (`etcdimg restore`)")
			} else if a.Listed {
				why = append(why, fmt.Sprintf("%s's data differs from its peers' (CORRUPT): power it off first (the leader re-raises the alarm while it answers), then disarm it by hand (`etcdimg etcdctl -- alarm disarm`) and `etcdimg replace %s` to heal it from them", a.Member, a.Member))
			}
		default:
			why = append(why, fmt.Sprintf("%s: etcdimg does not know when that alarm's cause is gone; if you do, `etcdimg etcdctl -- alarm disarm`", a))
		}
	}
	if nospace {
		var db []maintain.Member
		for _, st := range sts {
			db = append(db, st.DB())
		}
		for _, b := range maintain.NoSpaceBlockers(db) {
			head := fmt.Sprintf("%s's database is %s, over %d%% of its %s quota", b.Name, HumanSize(b.DBSize), DisarmBelowPercent, HumanSize(b.Quota))
			switch b.Kind {
			case maintain.Unknown:
				why = append(why, fmt.Sprintf("%s does not answer (%v), so its database's size is unknown: start it, or wait until it answers", b.Name, oneLine(b.Err)))
			case maintain.FreePages:
				why = append(why, fmt.Sprintf("%s, with %s in use: `etcdimg defrag %s` gives the rest back", head, HumanSize(b.InUse), b.Name))
			case maintain.LiveData:
				why = append(why, fmt.Sprintf("%s, and %s of it is in use (history included): delete keys, then `etcdimg defrag --compact`, or grow the data disk", head, HumanSize(b.InUse)))
			}
		}
	}
	if len(why) > 0 {
		return fmt.Errorf("%s; then run it again", strings.Join(why, "; "))
	}
	return nil
}

// oneLine is err's text on one line.
func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

// HumanSize is n bytes in B, KiB, MiB or GiB.
func HumanSize(n int64) string { return maintain.Human(n) }

// DefragOptions say which members Defragment takes, and how.
type DefragOptions struct {
	// Only names the members to defragment; every member when empty.
	Only []string
	// Compact compacts the cluster's history to its current revision
	// first (etcd's NOSPACE procedure): the space that deleted keys and
	// old revisions hold is given back only then. Watchers resuming
	// from an older revision get ErrCompacted.
	Compact bool
	// Timeout bounds one member's defragmentation (10 minutes when 0):
	// it rewrites the whole database file, and the member serves no
	// requests meanwhile.
	Timeout time.Duration
	// Say reports each step: the compaction, each leadership moved, each
	// member defragmented (DefragResult.String).
	Say Say
	// MembersRecover says the members recover from NOSPACE by themselves
	// (the spec's maintenance.check): under the alarm, when no lock can
	// be taken, Defragment then leaves it to them rather than defragment
	// beside them in another order.
	MembersRecover bool
}

// DefragResult is one member's defragmentation: its status before and
// after, and how long it took.
type DefragResult struct {
	Member        string
	Before, After MemberStatus
	Took          time.Duration
}

// Reclaimed is how many bytes the database file shrank by.
func (r DefragResult) Reclaimed() int64 { return r.Before.DBSize - r.After.DBSize }

func (r DefragResult) String() string {
	return fmt.Sprintf("%s defragmented: database %s (%s in use) → %s (%s in use), %s reclaimed",
		r.Member, HumanSize(r.Before.DBSize), HumanSize(r.Before.DBSizeInUse), HumanSize(r.After.DBSize), HumanSize(r.After.DBSizeInUse), HumanSize(r.Reclaimed()))
}

// defragSettle bounds the wait, after a member's defragmentation, for
// every member to be healthy again (a member that served nothing while
// it was defragmented catches up with the leader) before the next.
var defragSettle = time.Minute

// defragOrder is the order Defragment takes members in: only's (every
// member's when empty) in spec order, the leader last.
func defragOrder(members, only []string, leader string) ([]string, error) {
	if len(only) == 0 {
		return UpgradeOrder(members, leader), nil
	}
	for _, n := range only {
		if !slices.Contains(members, n) {
			return nil, fmt.Errorf("defrag: no member %q in the spec; members: %s", n, strings.Join(members, ", "))
		}
	}
	targets := slices.DeleteFunc(slices.Clone(members), func(n string) bool { return !slices.Contains(only, n) })
	return UpgradeOrder(targets, leader), nil
}

// Defragment defragments members one at a time (`etcdimg defrag`), under
// the cluster's operation lock, so that it never overlaps an upgrade, a
// roll, a replace or a rotation: followers first in spec order, then the
// leader after its leadership moved to another member. Before each
// member every member of the spec must be healthy (the first time at
// once, after a defragmentation within defragSettle). It stops at the
// first member that fails, naming those left untouched, and returns the
// members defragmented so far.
//
// While the database is full (NOSPACE) nobody can take the lock, which
// is a write; Defragment then checks that no operation holds it and goes
// on without it, and says so.
func (e *Etcd) Defragment(ctx context.Context, o DefragOptions) ([]DefragResult, error) {
	say := func(step string, start time.Time) {
		if o.Say != nil {
			o.Say(step, time.Since(start))
		}
	}
	var members []string
	for _, ep := range e.Endpoints {
		members = append(members, ep.Member)
	}
	if _, err := defragOrder(members, o.Only, ""); err != nil {
		return nil, err
	}
	op := "defrag"
	if len(o.Only) > 0 {
		op += " " + strings.Join(o.Only, " ")
	}
	start := time.Now()
	// take takes the operation lock; while NOSPACE refuses the lease it
	// needs (a write), it checks nobody holds it instead, and leaves lock
	// nil, to be taken before the next member once it can be: an alarm
	// disarmed half way would otherwise let another operation start
	// beside this one.
	var lock *OperationLock
	defer func() {
		if lock != nil {
			lock.Release()
		}
	}()
	take := func() error {
		l, err := e.LockOperation(ctx, op)
		if errors.Is(err, rpctypes.ErrNoSpace) {
			return e.lockFree(ctx)
		}
		lock = l
		return err
	}
	if err := take(); err != nil {
		return nil, fmt.Errorf("defrag: %w", err)
	}
	if lock == nil && o.MembersRecover {
		return nil, errors.New("defrag: refused, nothing defragmented: the database is full (NOSPACE), and the members recover from it by themselves (maintenance.check): they compact, defragment one at a time and disarm; `etcdimg alarms` shows each member's size; if live data fills the quota, delete keys or grow the data disks")
	}
	if lock == nil {
		say("the database is full (NOSPACE): no operation can take the cluster's lock while it lasts, nor this one; going on without it", start)
	}
	snap, err := e.healthy(ctx, members, 0)
	if err != nil {
		return nil, fmt.Errorf("defrag: refused, %w", err)
	}
	leader := ""
	if ld, ok := snap.Leader(); ok {
		leader = ld.Name
	}
	order, _ := defragOrder(members, o.Only, leader)
	if o.Compact {
		start := time.Now()
		rev, err := e.compact(ctx)
		if err != nil {
			return nil, fmt.Errorf("defrag: %w", err)
		}
		say(fmt.Sprintf("history compacted to revision %d", rev), start)
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 10 * time.Minute
	}
	l := &Lifecycle{Etcd: e, Members: members, Say: o.Say}
	var done []DefragResult
	for i, n := range order {
		stop := func(err error) ([]DefragResult, error) {
			return done, fmt.Errorf("defrag stopped at %s (%d of %d): %w; not defragmented: %s", n, i+1, len(order), err, strings.Join(order[i:], ", "))
		}
		if lock != nil {
			if err := lock.Held(ctx); err != nil {
				return stop(err)
			}
		} else if err := take(); err != nil {
			return stop(err)
		}
		if i > 0 {
			if snap, err = e.healthy(ctx, members, defragSettle); err != nil {
				return stop(err)
			}
		}
		if err := l.moveLeaderFrom(ctx, snap, n); err != nil {
			return stop(err)
		}
		r, err := e.defragOne(ctx, n, timeout)
		if err != nil {
			return stop(err)
		}
		done = append(done, r)
		if o.Say != nil {
			o.Say(r.String(), r.Took)
		}
	}
	return done, nil
}

// lockFree says who holds the operation lock, if anyone does (a read,
// which a full database still serves).
func (e *Etcd) lockFree(ctx context.Context) error {
	cli, err := e.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	holder, err := maintain.OperationHolder(ctx, cli)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if holder != "" {
		return heldBy(holder)
	}
	return nil
}

// healthy observes the cluster until every member is healthy, within
// bound (once, when bound is 0), and returns what it saw then, or why
// not.
func (e *Etcd) healthy(ctx context.Context, members []string, bound time.Duration) (*Snapshot, error) {
	deadline := time.Now().Add(bound)
	for {
		snap, err := e.Observe(ctx)
		if err == nil {
			bad := snap.Unhealthy(members, members)
			if len(bad) == 0 {
				return snap, nil
			}
			err = errors.New(strings.Join(bad, "; "))
		}
		if !time.Now().Before(deadline) {
			if bound > 0 {
				return nil, fmt.Errorf("the cluster is not healthy after %s: %w", bound, err)
			}
			return nil, fmt.Errorf("the cluster is not healthy: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// compact compacts the cluster's history to its current revision and
// waits until the member that answered has given the space back to its
// database (the others do the same in their own time); it returns the
// revision.
func (e *Etcd) compact(ctx context.Context) (int64, error) {
	cli, err := e.Client()
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	return maintain.CompactToCurrent(ctx, cli)
}

// defragOne defragments the member called name, within timeout, and
// reads its status before and after.
func (e *Etcd) defragOne(ctx context.Context, name string, timeout time.Duration) (DefragResult, error) {
	r := DefragResult{Member: name}
	i := slices.IndexFunc(e.Endpoints, func(ep health.Endpoint) bool { return ep.Member == name })
	ep := e.Endpoints[i]
	if r.Before = e.status(ctx, ep, 5*time.Second); r.Before.Err != nil {
		return r, fmt.Errorf("status: %w", r.Before.Err)
	}
	cli, err := e.Client(ep.URL)
	if err != nil {
		return r, err
	}
	defer cli.Close()
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := cli.Defragment(dctx, ep.URL); err != nil {
		return r, fmt.Errorf("defragment (bound %s): %w", timeout, err)
	}
	r.Took = time.Since(start)
	if r.After = e.status(ctx, ep, 10*time.Second); r.After.Err != nil {
		return r, fmt.Errorf("status after defragmenting: %w", r.After.Err)
	}
	return r, nil
}
