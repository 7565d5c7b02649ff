package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"etcdimg/cluster/health"
	"etcdimg/internal/etcdtest"
	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
)

// members starts an embedded etcd cluster of n members named etcd-1...
// (etcdtest.Cluster) and returns it as the operator reaches it.
func members(t *testing.T, n int, tweak func(*embed.Config)) *Etcd {
	t.Helper()
	e := &Etcd{}
	for _, m := range etcdtest.Cluster(t, n, tweak) {
		e.Endpoints = append(e.Endpoints, health.Endpoint{Member: m.Name, URL: m.URL})
	}
	return e
}

// steps records what Defragment says, in order.
type steps []string

func (s *steps) say(step string, _ time.Duration) { *s = append(*s, step) }

func (s steps) index(prefix string) int {
	return slices.IndexFunc(s, func(l string) bool { return strings.HasPrefix(l, prefix) })
}

// TestDefragOrder: the named members (every one when none is named) in
// spec order, the leader last; a name outside the spec is refused in one
// line naming the members.
func TestDefragOrder(t *testing.T) {
	all := []string{"etcd-1", "etcd-2", "etcd-3"}
	for _, tc := range []struct {
		name   string
		only   []string
		leader string
		want   []string
		err    string
	}{
		{name: "every member, leader first in the spec", leader: "etcd-1", want: []string{"etcd-2", "etcd-3", "etcd-1"}},
		{name: "every member, leader in the middle", leader: "etcd-2", want: []string{"etcd-1", "etcd-3", "etcd-2"}},
		{name: "no leader seen", want: all},
		{name: "named out of order", only: []string{"etcd-3", "etcd-1"}, leader: "etcd-2", want: []string{"etcd-1", "etcd-3"}},
		{name: "named, the leader among them", only: []string{"etcd-3", "etcd-1", "etcd-3"}, leader: "etcd-1", want: []string{"etcd-3", "etcd-1"}},
		{name: "a stranger", only: []string{"etcd-1", "etcd-9"}, err: `defrag: no member "etcd-9" in the spec; members: etcd-1, etcd-2, etcd-3`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := defragOrder(all, tc.only, tc.leader)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("err = %v, want %s", err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("order %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestDisarmWaitsUntilTheCauseIsGone: NOSPACE is disarmed only once
// every member's database is under 90% of its own quota, and the refusal
// says, member by member, whether defragmenting is enough or keys must
// go (or the disk grow); CORRUPT only once the member is gone; nothing
// is disarmed while any cause remains.
func TestDisarmWaitsUntilTheCauseIsGone(t *testing.T) {
	const mib = 1 << 20
	nospace := Alarm{Member: "etcd-2", ID: 2, Type: etcdserverpb.AlarmType_NOSPACE, Listed: true}
	member := func(name string, size, inUse, quota int64) MemberStatus {
		return MemberStatus{Name: name, DBSize: size, DBSizeInUse: inUse, DBQuota: quota}
	}
	small := member("etcd-1", 10*mib, 9*mib, 100*mib)
	for _, tc := range []struct {
		name   string
		alarms []Alarm
		sts    []MemberStatus
		want   []string // in the refusal; none: disarmable
	}{
		{name: "NOSPACE, every member under", alarms: []Alarm{nospace}, sts: []MemberStatus{small, member("etcd-2", 89*mib, 80*mib, 100*mib)}},
		{name: "NOSPACE, fragmented", alarms: []Alarm{nospace}, sts: []MemberStatus{small, member("etcd-2", 95*mib, 10*mib, 100*mib)},
			want: []string{"etcd-2's database is 95.0 MiB, over 90% of its 100.0 MiB quota, with 10.0 MiB in use: `etcdimg defrag etcd-2` gives the rest back; then run it again"}},
		{name: "NOSPACE, live data or history", alarms: []Alarm{nospace}, sts: []MemberStatus{member("etcd-1", 99*mib, 95*mib, 100*mib), member("etcd-2", 95*mib, 91*mib, 100*mib)},
			want: []string{"etcd-1's database is 99.0 MiB", "etcd-2's database is 95.0 MiB", "and 91.0 MiB of it is in use (history included): delete keys, then `etcdimg defrag --compact`, or grow the data disk"}},
		{name: "NOSPACE, each member against its own quota", alarms: []Alarm{nospace}, sts: []MemberStatus{member("etcd-1", 50*mib, 50*mib, 52*mib), member("etcd-2", 95*mib, 10*mib, 200*mib)},
			want: []string{"etcd-1's database is 50.0 MiB, over 90% of its 52.0 MiB quota"}},
		{name: "NOSPACE, a member does not answer", alarms: []Alarm{nospace}, sts: []MemberStatus{small, {Name: "etcd-2", Err: errors.New("context deadline\nexceeded")}},
			want: []string{"etcd-2 does not answer (context deadline exceeded), so its database's size is unknown"}},
		{name: "CORRUPT of a member", alarms: []Alarm{{Member: "etcd-3", ID: 3, Type: etcdserverpb.AlarmType_CORRUPT, Listed: true}}, sts: []MemberStatus{small},
			want: []string{"etcd-3's data differs from its peers' (CORRUPT): power it off first (the leader re-raises the alarm while it answers), then disarm it by hand (`etcdimg etcdctl -- alarm disarm`) and `etcdimg replace etcd-3` to heal it from them"}},
		{name: "CORRUPT of a member replaced since", alarms: []Alarm{{Member: "3", ID: 3, Type: etcdserverpb.AlarmType_CORRUPT}}, sts: []MemberStatus{small}},
		{name: "CORRUPT of the whole cluster", alarms: []Alarm{{Member: "the cluster", Type: etcdserverpb.AlarmType_CORRUPT}}, sts: []MemberStatus{small},
			want: []string{"no majority agreeing (CORRUPT for the whole cluster): restore the cluster from a verified backup (`etcdimg restore`)"}},
		{name: "a cause remains: nothing goes", alarms: []Alarm{{Member: "3", ID: 3, Type: etcdserverpb.AlarmType_CORRUPT}, nospace}, sts: []MemberStatus{member("etcd-1", 99*mib, 1*mib, 100*mib)},
			want: []string{"etcd-1's database is 99.0 MiB"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := disarmable(tc.alarms, tc.sts)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("disarmable")
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("a refusal on more than one line: %q", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("refusal %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestNoSpaceIsNamedRefusedThenRecovered: a real etcd with a tiny quota,
// filled until it answers "database space exceeded": the alarm is
// listed by member, `health` fails naming it and `status` shows it;
// disarming is refused while the database is over its quota, and still
// after the keys are deleted (their space comes back only with a
// compaction and a defragmentation); defrag --compact, which cannot take
// the operation lock while the database is full, gives the space back,
// the disarm goes through and writes resume.
func TestNoSpaceIsNamedRefusedThenRecovered(t *testing.T) {
	const quota = 2 << 20
	e := members(t, 1, func(c *embed.Config) { c.QuotaBackendBytes = quota })
	ctx := context.Background()
	cli, err := e.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	fillToNoSpace(t, cli, quota)
	var alarms []Alarm
	for deadline := time.Now().Add(10 * time.Second); len(alarms) == 0; time.Sleep(100 * time.Millisecond) {
		if alarms, err = e.Alarms(ctx); err != nil || time.Now().After(deadline) {
			t.Fatalf("alarms after NOSPACE: %v, %v", alarms, err)
		}
	}
	if len(alarms) != 1 || alarms[0].String() != "etcd-1: alarm NOSPACE" || !alarms[0].Listed {
		t.Fatalf("alarms %+v", alarms)
	}
	var out, warn strings.Builder
	err = e.CheckHealth(ctx, spec.Default(1), outdir.Layout(t.TempDir()), 5*time.Second, &out, &warn)
	if err == nil || !strings.HasPrefix(err.Error(), "health: etcd-1: alarm NOSPACE: the database reached its quota") || strings.Contains(err.Error(), "unhealthy:") {
		t.Errorf("health under NOSPACE: %v\n%s", err, out.String())
	}
	if got, want := e.AlarmsLine(ctx), "alarms: etcd-1: alarm NOSPACE (`etcdimg alarms` says what to do)"; got != want {
		t.Errorf("status line %q, want %q", got, want)
	}

	disarm := func(stage, refusal string) {
		t.Helper()
		done, err := e.Disarm(ctx)
		if err == nil || !strings.HasPrefix(err.Error(), "alarms --disarm: refused, nothing disarmed: etcd-1's database is ") || !strings.Contains(err.Error(), refusal) || done != nil {
			t.Errorf("disarm %s: %v, %v; want a refusal with %q", stage, done, err, refusal)
		}
		if a, _ := e.Alarms(ctx); len(a) != 1 {
			t.Errorf("disarm %s: the alarm went: %v", stage, a)
		}
	}
	disarm("over the quota", "delete keys, then `etcdimg defrag --compact`")
	if _, err := cli.Delete(ctx, "/fill/", clientv3.WithPrefix()); err != nil {
		t.Fatalf("delete under NOSPACE: %v", err)
	}
	disarm("after the delete alone", "delete keys, then `etcdimg defrag --compact`")

	var said steps
	done, err := e.Defragment(ctx, DefragOptions{Compact: true, Say: said.say})
	if err != nil {
		t.Fatalf("defrag --compact under NOSPACE: %v\n%s", err, strings.Join(said, "\n"))
	}
	if len(done) != 1 || done[0].Member != "etcd-1" || done[0].After.DBSize >= quota/100*DisarmBelowPercent || done[0].Reclaimed() <= 0 {
		t.Errorf("defragmented %+v", done)
	}
	if said.index("the database is full (NOSPACE): no operation can take the cluster's lock") != 0 || said.index("history compacted to revision ") != 1 || said.index("etcd-1 defragmented: database ") != 2 {
		t.Errorf("said:\n%s", strings.Join(said, "\n"))
	}
	t.Logf("%s", strings.Join(said, "\n"))

	disarmed, err := e.Disarm(ctx)
	if err != nil || len(disarmed) != 1 || disarmed[0].String() != "etcd-1: alarm NOSPACE" {
		t.Fatalf("disarm after defrag --compact: %v, %v", disarmed, err)
	}
	if a, err := e.Alarms(ctx); len(a) != 0 || err != nil {
		t.Errorf("alarms after the disarm: %v, %v", a, err)
	}
	if _, err := cli.Put(ctx, "/after", "written"); err != nil {
		t.Errorf("a write after the disarm: %v", err)
	}
	if err := e.CheckHealth(ctx, spec.Default(1), outdir.Layout(t.TempDir()), 5*time.Second, &out, &warn); err != nil {
		t.Errorf("health after the disarm: %v", err)
	}
	if got := e.AlarmsLine(ctx); got != "alarms: none" {
		t.Errorf("status line %q", got)
	}
	if done, err := e.Disarm(ctx); done != nil || err != nil {
		t.Errorf("disarm with no alarm: %v, %v", done, err)
	}
}

// TestDefragGoesLeaderLast: on three real members whose leader is
// etcd-2, defrag takes etcd-1, then etcd-3, then etcd-2 once its
// leadership moved away; each member's database size before and after
// is reported, the deleted keys' space comes back, and the operation
// lock is free again afterwards.
func TestDefragGoesLeaderLast(t *testing.T) {
	e := members(t, 3, nil)
	ctx := context.Background()
	leadBy(t, e, "etcd-2")
	cli, err := e.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	value := strings.Repeat("x", 16<<10)
	for i := range 100 {
		if _, err := cli.Put(ctx, fmt.Sprintf("/bulk/%03d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Delete(ctx, "/bulk/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}

	var said steps
	done, err := e.Defragment(ctx, DefragOptions{Compact: true, Say: said.say})
	t.Logf("%s", strings.Join(said, "\n"))
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	var reclaimed int64
	for _, r := range done {
		order = append(order, r.Member)
		reclaimed += r.Reclaimed()
		if r.Before.DBSize == 0 || r.After.DBSize == 0 || r.Before.DBSizeInUse == 0 || r.After.DBSizeInUse == 0 || r.After.DBSize > r.Before.DBSize {
			t.Errorf("%s: before %d (%d in use), after %d (%d in use)", r.Member, r.Before.DBSize, r.Before.DBSizeInUse, r.After.DBSize, r.After.DBSizeInUse)
		}
	}
	if want := []string{"etcd-1", "etcd-3", "etcd-2"}; !slices.Equal(order, want) {
		t.Errorf("defragmented %v, want %v", order, want)
	}
	if reclaimed <= 0 {
		t.Errorf("%d bytes reclaimed after 1.6 MiB were deleted and compacted", reclaimed)
	}
	moved, last := said.index("leadership moved from etcd-2 to "), said.index("etcd-2 defragmented: ")
	if moved < 0 || last < moved || said.index("etcd-3 defragmented: ") > moved {
		t.Errorf("etcd-2's leadership did not move after the followers and before its defragmentation:\n%s", strings.Join(said, "\n"))
	}
	if lk, err := e.LockOperation(ctx, "upgrade"); err != nil {
		t.Errorf("the operation lock after defrag: %v", err)
	} else {
		lk.Release()
	}
}

// TestDefragIsRefusedBeforeAnyMember: while another operation holds the
// cluster's lock, for a name outside the spec, and while a member of the
// spec is not healthy, defrag refuses in one line and defragments
// nobody.
func TestDefragIsRefusedBeforeAnyMember(t *testing.T) {
	e := members(t, 1, nil)
	ctx := context.Background()
	down := etcdtest.FreeURL(t, "http")
	gone := &Etcd{Endpoints: append(slices.Clone(e.Endpoints), health.Endpoint{Member: "etcd-2", URL: down.String()})}
	for _, tc := range []struct {
		name string
		etcd *Etcd
		hold string // an operation holding the lock meanwhile
		only []string
		want string
	}{
		{name: "another operation holds the lock", etcd: e, hold: "upgrade", want: "defrag: cluster: another operation holds the cluster: upgrade, by "},
		{name: "a stranger", etcd: e, only: []string{"etcd-7"}, want: `defrag: no member "etcd-7" in the spec; members: etcd-1`},
		{name: "a member down", etcd: gone, want: "defrag: refused, the cluster is not healthy: etcd-2 is not a started member"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.hold != "" {
				other := &Etcd{Endpoints: e.Endpoints}
				lk, err := other.LockOperation(ctx, tc.hold)
				if err != nil {
					t.Fatal(err)
				}
				defer lk.Release()
			}
			var said steps
			done, err := tc.etcd.Defragment(ctx, DefragOptions{Only: tc.only, Say: said.say})
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("err = %v, want %s...", err, tc.want)
			}
			if len(done) > 0 || len(said) > 0 {
				t.Errorf("defragmented %v, said %q", done, said)
			}
		})
	}
}

// TestDefragUnderNoSpaceTakesTheLockOnceItCan: under NOSPACE defrag goes
// on without the operation lock (a lease is a write); once the alarm is
// disarmed half way (etcd-1's small quota was the only one full), another
// operation could take the lock and run beside it. Defrag now takes the
// lock before each next member, and stops, naming the holder, when
// another operation got it first. It went on before (audit D3).
func TestDefragUnderNoSpaceTakesTheLockOnceItCan(t *testing.T) {
	const quota = 2 << 20
	e := members(t, 3, func(c *embed.Config) {
		if c.Name == "etcd-1" {
			c.QuotaBackendBytes = quota
		}
	})
	ctx := context.Background()
	leadBy(t, e, "etcd-2")
	cli, err := e.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	fillToNoSpace(t, cli, quota)
	if _, err := cli.Delete(ctx, "/fill/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	// When the members recover by themselves, it is left to them.
	if done, err := e.Defragment(ctx, DefragOptions{Compact: true, MembersRecover: true}); err == nil || len(done) != 0 ||
		!strings.Contains(err.Error(), "refused, nothing defragmented: the database is full (NOSPACE), and the members recover from it by themselves") {
		t.Fatalf("defrag while the members recover: %v, %+v", err, done)
	}
	var said steps
	var other *OperationLock
	var otherErr error
	say := func(step string, d time.Duration) {
		said.say(step, d)
		if strings.HasPrefix(step, "etcd-1 defragmented") {
			if _, err := e.Disarm(ctx); err != nil {
				t.Errorf("disarm after etcd-1: %v", err)
			}
			other, otherErr = e.LockOperation(ctx, "roll")
		}
	}
	done, err := e.Defragment(ctx, DefragOptions{Compact: true, Say: say})
	t.Logf("%s", strings.Join(said, "\n"))
	if otherErr != nil {
		t.Fatalf("the other operation: %v", otherErr)
	}
	defer other.Release()
	if err == nil || !strings.Contains(err.Error(), "roll") || len(done) != 1 || done[0].Member != "etcd-1" {
		t.Fatalf("defrag beside an operation that took the lock: %v, %+v", err, done)
	}
}

// leadBy moves the cluster's leadership to member name, if another
// member leads.
func leadBy(t *testing.T, e *Etcd, name string) {
	t.Helper()
	ctx := context.Background()
	snap, err := e.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader, ok := snap.Leader()
	if !ok {
		t.Fatal("no leader")
	}
	if leader.Name != name {
		if err := e.MoveLeader(ctx, leader.URL, snap.Status[name].ID); err != nil {
			t.Fatalf("move the leadership to %s: %v", name, err)
		}
	}
}

// fillToNoSpace writes 64 KiB values under /fill/ until etcd answers
// "database space exceeded" (a quota of quota bytes).
func fillToNoSpace(t *testing.T, cli *clientv3.Client, quota int) {
	t.Helper()
	value := strings.Repeat("x", 64<<10)
	var full error
	for i := 0; i < 1000 && full == nil; i++ {
		_, full = cli.Put(context.Background(), fmt.Sprintf("/fill/%04d", i), value)
	}
	if !errors.Is(full, rpctypes.ErrNoSpace) || !strings.Contains(full.Error(), "database space exceeded") {
		t.Fatalf("filling a %d-byte quota: %v", quota, full)
	}
}
