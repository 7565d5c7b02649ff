package maintain

import (
	"errors"
	"strings"
	"testing"
)

const mib = 1 << 20

func TestNeeds(t *testing.T) {
	p := Policy{FreePercent: 20}
	for _, tc := range []struct {
		name string
		m    Member
		want string // a part of why; "" for no
	}{
		{"a fifth of the quota free", Member{DBSize: 300 * mib, InUse: 200 * mib, Quota: 500 * mib}, "100.0 MiB free, at least 20% of the 500.0 MiB quota"},
		{"less free", Member{DBSize: 300 * mib, InUse: 201 * mib, Quota: 500 * mib}, ""},
		{"near the quota, a little free", Member{DBSize: 420 * mib, InUse: 390 * mib, Quota: 500 * mib}, "over 80% of the 500.0 MiB quota, and 30.0 MiB of it is free"},
		{"near the quota, too little free", Member{DBSize: 420 * mib, InUse: 400 * mib, Quota: 500 * mib}, ""},
		{"a tiny quota: not worth the pause", Member{DBSize: 3 * mib, InUse: 0, Quota: 4 * mib}, ""},
		{"does not answer", Member{DBSize: 300 * mib, Quota: 500 * mib, Err: errors.New("x")}, ""},
		{"no quota known", Member{DBSize: 300 * mib}, ""},
	} {
		ok, why := p.Needs(tc.m)
		if ok != (tc.want != "") || !strings.Contains(why, tc.want) {
			t.Errorf("%s: Needs = %v, %q; want %q", tc.name, ok, why, tc.want)
		}
	}
}

func names(ms []Member) string {
	var s []string
	for _, m := range ms {
		s = append(s, m.Name)
	}
	return strings.Join(s, ",")
}

func TestOrderPutsTheLeaderLast(t *testing.T) {
	ms := []Member{{Name: "a"}, {Name: "b", Leader: true}, {Name: "c"}}
	if got := names(Order(ms)); got != "a,c,b" {
		t.Errorf("Order = %s", got)
	}
	if names(ms) != "a,b,c" {
		t.Error("Order changed its argument")
	}
}

// TestNoSpace: what keeps NOSPACE from being disarmed, member by member,
// and which member is defragmented next: one that a defragmentation
// brings under its limit, followers first, none while a member does not
// answer (it may be the one being defragmented).
func TestNoSpace(t *testing.T) {
	q := int64(100 * mib)
	under := func(n string) Member { return Member{Name: n, DBSize: 50 * mib, InUse: 40 * mib, Quota: q} }
	fragmented := func(n string) Member { return Member{Name: n, DBSize: 95 * mib, InUse: 10 * mib, Quota: q} }
	full := func(n string) Member { return Member{Name: n, DBSize: 99 * mib, InUse: 95 * mib, Quota: q} }
	leader := func(m Member) Member { m.Leader = true; return m }
	down := Member{Name: "c", Err: errors.New("deadline")}
	for _, tc := range []struct {
		name     string
		ms       []Member
		blockers string // name:kind
		next     string
	}{
		{"every member under: disarm", []Member{under("a"), under("b"), under("c")}, "", ""},
		{"followers first", []Member{leader(fragmented("a")), fragmented("b"), fragmented("c")}, "b:1,c:1,a:1", "b"},
		{"the leader when it is the last", []Member{leader(fragmented("a")), under("b"), under("c")}, "a:1", "a"},
		{"live data first: nobody (its pages may be freed yet)", []Member{full("a"), fragmented("b"), under("c")}, "a:2,b:1", ""},
		{"the leader waits for a follower over its limit", []Member{leader(fragmented("a")), full("b"), under("c")}, "b:2,a:1", ""},
		{"only live data: nothing to do", []Member{full("a"), under("b"), under("c")}, "a:2", ""},
		{"a member does not answer: wait", []Member{fragmented("a"), under("b"), down}, "a:1,c:0", ""},
		{"each against its own quota", []Member{{Name: "a", DBSize: 50 * mib, InUse: 10 * mib, Quota: 52 * mib}, under("b")}, "a:1", "a"},
	} {
		var got []string
		for _, b := range NoSpaceBlockers(tc.ms) {
			got = append(got, b.Name+":"+string(rune('0'+b.Kind)))
		}
		if strings.Join(got, ",") != tc.blockers {
			t.Errorf("%s: blockers %v, want %s", tc.name, got, tc.blockers)
		}
		next, ok := NoSpaceNext(tc.ms)
		if ok != (tc.next != "") || next.Name != tc.next {
			t.Errorf("%s: next %q %v, want %q", tc.name, next.Name, ok, tc.next)
		}
	}
}
