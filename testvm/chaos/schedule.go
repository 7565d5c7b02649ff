// Package chaos is `etcdimg chaos`: traffic from package workload
// against a running local cluster while faults are injected on a
// schedule drawn from a seed, then the checks (package history) and a
// report.
package chaos

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"etcdimg/testvm/local"
)

// Fault kinds, as --faults names them.
const (
	Kill      = "kill"      // kill -9 of one member's QEMU (the leader or a follower), then boot it again
	PowerOff  = "poweroff"  // ACPI power-off of one member, then boot it again
	PowerCut  = "powercut"  // kill -9 of every member's QEMU at once, then boot them all
	Partition = "partition" // in the LAN switch: isolate one member, split minority from majority, or drop a share of frames
	Replace   = "replace"   // `etcdimg replace` of one member: with a blank data disk, or keeping its disk
	Roll      = "roll"      // `etcdimg roll`: every member replaced in turn, with blank data disks or keeping them
	Upgrade   = "upgrade"   // `etcdimg upgrade`: every member onto a new slot over the network, or one member sent another cluster's image
)

// Kinds is every fault kind, the default of --faults.
var Kinds = []string{Kill, PowerOff, PowerCut, Partition, Replace, Roll, Upgrade}

// Variants are the forms a fault kind takes, drawn from the seed unless
// --faults names one (kill:leader, partition:lossy).
var Variants = map[string][]string{
	Kill:      {"leader", "follower"},
	Partition: {"isolate", "split", "lossy"},
	Replace:   {Blank, Keep},
	Roll:      {Blank, Keep},
	Upgrade:   {GoodUpgrade, ForeignUpgrade},
}

// The variants of replace and roll: a blank data disk (a new member ID,
// joined as a learner and promoted), or the disk kept (the same member).
const (
	Blank = "blank"
	Keep  = "keep"
)

// Fault is one planned fault: what, on whom, when, and for how long
// before it is healed (a member booted again, the partition lifted).
type Fault struct {
	Kind    string
	Variant string // one of Variants[Kind]
	Member  string // the member it targets, when the variant does not choose it at run time
	At, For time.Duration
}

func (f Fault) String() string {
	s := f.Kind
	if f.Variant != "" {
		s += " " + f.Variant
	}
	if f.Member != "" {
		s += " " + f.Member
	}
	return fmt.Sprintf("%s at %s for %s", s, f.At, f.For)
}

// Quiet periods of a run: traffic alone before the first fault, and
// after the last one is healed, so that every member catches up before
// the final checks.
const (
	Warmup   = 10 * time.Second
	Cooldown = 20 * time.Second
	// minSlot is the least time a fault is given, and maxHold the
	// longest a fault lasts before it is healed (half its slot, or less).
	minSlot = 10 * time.Second
	maxHold = 10 * time.Second
)

// Schedule plans the faults of kinds over a run of duration against
// members, from seed: the same seed and arguments give the same plan.
// Each fault gets an equal slot between Warmup and duration-Cooldown, in
// an order and with targets drawn from the seed, and is healed after
// half its slot (at most maxHold). Replace and roll are healed when the
// command ends; a fault that overruns its slot delays the next one, and
// the run, rather than overlapping it.
func Schedule(kinds, members []string, duration time.Duration, seed uint64) ([]Fault, error) {
	for _, k := range kinds {
		kind, v, _ := strings.Cut(k, ":")
		if !slices.Contains(Kinds, kind) {
			return nil, fmt.Errorf("--faults: unknown fault %q; the faults are %s", k, strings.Join(Kinds, ","))
		}
		if v != "" && !slices.Contains(Variants[kind], v) {
			return nil, fmt.Errorf("--faults: %s has no variant %q; its variants are %s", kind, v, strings.Join(Variants[kind], ", "))
		}
	}
	if len(members) < 3 {
		return nil, fmt.Errorf("chaos: %d members: a fault test needs a cluster of at least 3, which keeps a quorum with one member down", len(members))
	}
	if least := Warmup + Cooldown + time.Duration(len(kinds))*minSlot; len(kinds) > 0 && duration < least {
		return nil, fmt.Errorf("--duration %s is too short for %d faults: give at least %s (%s of traffic before the first, %s per fault, %s after the last)",
			duration, len(kinds), least, Warmup, minSlot, Cooldown)
	}
	rnd := rand.New(rand.NewPCG(seed, 0x6368616f73)) // "chaos"
	order := slices.Clone(kinds)
	rnd.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	var plan []Fault
	if len(order) == 0 {
		return plan, nil
	}
	each := (duration - Warmup - Cooldown) / time.Duration(len(order))
	for i, k := range order {
		kind, v, _ := strings.Cut(k, ":")
		f := Fault{Kind: kind, At: Warmup + time.Duration(i)*each, For: min(each/2, maxHold)}
		if vs := Variants[kind]; len(vs) > 0 {
			f.Variant = vs[rnd.IntN(len(vs))]
			if v != "" {
				f.Variant = v
			}
		}
		switch {
		case kind == Partition && f.Variant != "split", kind == PowerOff, kind == Replace, kind == Upgrade && f.Variant == ForeignUpgrade:
			f.Member = members[rnd.IntN(len(members))]
		}
		if kind == Roll || kind == Replace || kind == Upgrade {
			f.For = 0 // healed when the command returns
		}
		plan = append(plan, f)
	}
	return plan, nil
}

// Plan is Schedule against the running local cluster st: every member
// must be running.
func Plan(st *local.State, kinds []string, duration time.Duration, seed uint64) ([]Fault, error) {
	if n := len(st.Running()); n != len(st.Members) {
		return nil, fmt.Errorf("chaos: %d of %d members are running; start the others (`etcdimg start NAME`) first", n, len(st.Members))
	}
	var names []string
	for _, m := range st.Members {
		names = append(names, m.Name)
	}
	return Schedule(kinds, names, duration, seed)
}

// NeedsImages reports whether plan replaces or rolls members: they boot
// images made from the current spec and PKI, built before any fault.
func NeedsImages(plan []Fault) bool {
	return slices.ContainsFunc(plan, func(f Fault) bool { return f.Kind == Replace || f.Kind == Roll })
}
