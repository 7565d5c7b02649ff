package chaos

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

var three = []string{"etcd-1", "etcd-2", "etcd-3"}

// TestTheSameSeedGivesTheSameSchedule, and another seed another one;
// every fault lies between the warm-up and the cool-down, is healed
// before the next begins, and each kind asked for comes once.
func TestTheSameSeedGivesTheSameSchedule(t *testing.T) {
	a, err := Schedule(Kinds, three, 5*time.Minute, 42)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Schedule(Kinds, three, 5*time.Minute, 42)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("seed 42 twice:\n%v\n%v", a, b)
	}
	differs := false
	for seed := uint64(1); seed < 5 && !differs; seed++ {
		c, _ := Schedule(Kinds, three, 5*time.Minute, seed)
		differs = !reflect.DeepEqual(a, c)
	}
	if !differs {
		t.Error("four other seeds gave the same schedule as 42")
	}
	seen := map[string]bool{}
	for i, f := range a {
		seen[f.Kind] = true
		if f.At < Warmup || f.At+f.For > 5*time.Minute-Cooldown {
			t.Errorf("%v: outside %s … %s", f, Warmup, 5*time.Minute-Cooldown)
		}
		if i > 0 && a[i-1].At+a[i-1].For > f.At {
			t.Errorf("%v begins before %v is healed", f, a[i-1])
		}
	}
	if len(a) != len(Kinds) || len(seen) != len(Kinds) {
		t.Errorf("schedule %v, want each of %v once", a, Kinds)
	}
}

// TestBadSchedulesAreRefused in one line naming the flag and the fix.
func TestBadSchedulesAreRefused(t *testing.T) {
	for _, tc := range []struct {
		kinds    []string
		members  []string
		duration time.Duration
		want     string
	}{
		{[]string{"kill", "meteor"}, three, 5 * time.Minute, `--faults: unknown fault "meteor"; the faults are kill,poweroff,powercut,partition,replace,roll`},
		{Kinds, three, time.Minute, "--duration 1m0s is too short for 6 faults: give at least 1m30s"},
		{[]string{"kill"}, three[:1], 5 * time.Minute, "a fault test needs a cluster of at least 3"},
		{[]string{"kill:everyone"}, three, 5 * time.Minute, `--faults: kill has no variant "everyone"; its variants are leader, follower`},
		{[]string{"roll:fast"}, three, 5 * time.Minute, `--faults: roll has no variant "fast"; its variants are blank, keep`},
	} {
		_, err := Schedule(tc.kinds, tc.members, tc.duration, 1)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v %v %s: %v, want %q", tc.kinds, tc.members, tc.duration, err, tc.want)
		}
	}
}

// TestNamedVariantsAreKept: --faults kill:leader,partition:split plans
// exactly those, whatever the seed; replace names a member, roll none,
// and both are healed when the command returns.
func TestNamedVariantsAreKept(t *testing.T) {
	for seed := uint64(0); seed < 20; seed++ {
		plan, err := Schedule([]string{"kill:leader", "partition:split", "replace:blank", "roll:keep"}, three, 2*time.Minute, seed)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range plan {
			bad := false
			switch f.Kind {
			case Kill:
				bad = f.Variant != "leader"
			case Partition:
				bad = f.Variant != "split" || f.Member != ""
			case Replace:
				bad = f.Variant != Blank || f.Member == "" || f.For != 0
			case Roll:
				bad = f.Variant != Keep || f.Member != "" || f.For != 0
			}
			if bad {
				t.Fatalf("seed %d: %v", seed, f)
			}
		}
	}
}
