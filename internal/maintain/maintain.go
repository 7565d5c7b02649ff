// Package maintain holds the rules of database maintenance that the
// members (scheduled defragmentation and NOSPACE recovery, in the image)
// and the operator's machine (`etcdimg defrag`, `etcdimg alarms
// --disarm`) share: when a member's free pages are worth a
// defragmentation, the order members are taken in (the leader last), and
// when the NOSPACE alarm may be disarmed.
package maintain

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"etcdimg/internal/layout"
)

// Member is one member's database as its status reports it.
type Member struct {
	Name    string
	ID      uint64
	Leader  bool // it is the cluster's leader
	Learner bool
	Applied uint64 // its raft applied index
	// DBSize is the size of its database file (what the quota counts),
	// InUse the part that holds data, Quota its backend quota (members
	// lower theirs to fit small data disks), in bytes.
	DBSize, InUse, Quota int64
	// Err is why it did not answer, if it did not.
	Err error
}

// Free is what a defragmentation gives back: the database's free pages.
func (m Member) Free() int64 { return max(m.DBSize-m.InUse, 0) }

// DisarmBelowPercent is how full, at most, every member's database may be
// (of its quota) for NOSPACE to be disarmed: a database at its quota
// raises the alarm again with the next write.
const DisarmBelowPercent = 90

// Limit is the size m's database must be under for NOSPACE to be
// disarmed.
func (m Member) Limit() int64 { return m.Quota / 100 * DisarmBelowPercent }

// Policy says when scheduled defragmentation takes a member.
type Policy struct {
	// FreePercent: a member whose free pages are at least this share of
	// its quota is defragmented.
	FreePercent int
}

// nearQuotaPercent and nearQuotaFreePercent: a database over
// nearQuotaPercent of its quota is defragmented sooner, once its free
// pages are nearQuotaFreePercent of the quota (ahrtr/etcd-defrag's rule:
// the quota is what stops writes, and what is free counts most there).
const (
	nearQuotaPercent     = 80
	nearQuotaFreePercent = 5
)

// minFree is the least a defragmentation must give back to be worth the
// member's pause, whatever the quota.
const minFree = 4 << 20

// Needs says whether m's free pages call for a defragmentation, and why.
func (p Policy) Needs(m Member) (bool, string) {
	if m.Err != nil || m.Quota <= 0 || m.Free() < minFree {
		return false, ""
	}
	free := m.Free()
	switch {
	case free >= m.Quota/100*int64(p.FreePercent):
		return true, fmt.Sprintf("%s free, at least %d%% of the %s quota", Human(free), p.FreePercent, Human(m.Quota))
	case m.DBSize >= m.Quota/100*nearQuotaPercent && free >= m.Quota/100*nearQuotaFreePercent:
		return true, fmt.Sprintf("the database is %s, over %d%% of the %s quota, and %s of it is free", Human(m.DBSize), nearQuotaPercent, Human(m.Quota), Human(free))
	}
	return false, ""
}

// Order is ms in their order, the leader last.
func Order(ms []Member) []Member {
	out := slices.Clone(ms)
	slices.SortStableFunc(out, func(a, b Member) int {
		switch {
		case a.Leader == b.Leader:
			return 0
		case a.Leader:
			return 1
		}
		return -1
	})
	return out
}

// Blocker is why NOSPACE may not be disarmed yet: a member that does not
// answer (its size is unknown), whose free pages hold it over its Limit
// (a defragmentation gives them back), or whose live data alone does.
type Blocker struct {
	Member
	Kind BlockKind
}

// BlockKind is what keeps a member's database over its limit.
type BlockKind int

const (
	// Unknown: the member does not answer.
	Unknown BlockKind = iota
	// FreePages: a defragmentation brings it under its limit.
	FreePages
	// LiveData: what is in use alone is over the limit (after a
	// compaction, live keys): delete keys or grow the data disk.
	LiveData
)

// NoSpaceBlockers are the members that keep NOSPACE from being disarmed,
// in Order; none when it may be.
func NoSpaceBlockers(ms []Member) []Blocker {
	var out []Blocker
	for _, m := range Order(ms) {
		switch {
		case m.Err != nil:
			out = append(out, Blocker{m, Unknown})
		case m.DBSize < m.Limit():
		case m.InUse < m.Limit():
			out = append(out, Blocker{m, FreePages})
		default:
			out = append(out, Blocker{m, LiveData})
		}
	}
	return out
}

// NoSpaceNext is the member to defragment next while NOSPACE stands: the
// first member over its limit, in Order, and only when a
// defragmentation brings it under (its free pages keep it over); none
// while that member's live data keeps it over (a compaction may still be
// freeing its pages, or keys must be deleted) or while any member does
// not answer (one member at a time: one that does not answer may be
// being defragmented). Members that decide from views a moment apart
// thus pick the same member, or none.
func NoSpaceNext(ms []Member) (Member, bool) {
	bs := NoSpaceBlockers(ms)
	for _, b := range bs {
		if b.Kind == Unknown {
			return Member{}, false
		}
	}
	if len(bs) > 0 && bs[0].Kind == FreePages {
		return bs[0].Member, true
	}
	return Member{}, false
}

// Human is n bytes in B, KiB, MiB or GiB.
func Human(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
}

// CompactToCurrent compacts the cluster's history to its current
// revision (etcd's NOSPACE procedure: deleted keys and old revisions give
// their space back only then) and waits until the member cli reaches has
// given the space back to its database (the others do in their own
// time). A compaction at a revision already compacted is no error. It
// returns the revision; ctx bounds it.
func CompactToCurrent(ctx context.Context, cli *clientv3.Client) (int64, error) {
	r, err := cli.Get(ctx, layout.OperationLockKey, clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("compact: the current revision: %w", err)
	}
	rev := r.Header.Revision
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return 0, fmt.Errorf("compact to revision %d: %w", rev, err)
	}
	return rev, nil
}
