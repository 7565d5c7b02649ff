// Package history is what `etcdimg chaos` records and checks: the
// operations its clients made against a cluster, each with its call and
// return time and its result, and the check that the history is
// linearizable against a model of etcd's key-value store, with porcupine
// (the checker of etcd's own robustness tests).
//
// The model is per key: a key's state is whether it exists, its value and
// its mod revision, and the least the store's revision can be as far as
// the key's operations tell (etcd's revision is one counter for the whole
// store: a key's revisions only grow, also across a delete). Writes carry
// values that are unique in a run, so a read names the write it saw. An
// operation whose outcome is unknown (it timed out, or failed in a way
// that does not say whether etcd applied it) may have happened or not,
// at any time after its call. Across keys, the answers' revisions are
// checked against the order of time: what began after an answer at
// revision R returned is answered at R or later, and writes above R; and
// no two writes take one revision. A write of unknown outcome that a
// read saw is, for these, a write at the mod revision the read gives.
package history

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/anishathalye/porcupine"
)

// Kind is what an operation does.
type Kind string

const (
	Put    Kind = "put"
	Get    Kind = "get"    // linearizable unless Serializable
	Delete Kind = "delete" // one key
	CAS    Kind = "cas"    // a transaction: if the key's mod revision is Expect, put Value
)

// Op is one recorded operation: its call, and what came back.
type Op struct {
	Client       int
	Kind         Kind
	Key          string
	Value        string // put, cas: the value written (unique in a run)
	Expect       int64  // cas: the mod revision compared; 0 is "the key does not exist"
	Serializable bool   // get: served by one member from its own state, may be stale

	Call, Return time.Duration // since the run began; Return is unused when Unknown

	Unknown bool // no answer, or an error that does not say whether etcd applied it
	Failed  bool // an error that says it was not applied: not part of the history

	Found     bool   // get: the key exists
	Got       string // get: its value
	ModRev    int64  // get: the key's mod revision; put, cas that held: the revision of the write
	Succeeded bool   // cas: the comparison held; delete: a key was deleted
	Rev       int64  // the response header's revision: the store's as it answered (a write's own; a delete's is only here)
}

// state is one key's state in the model, with what the key's history
// so far says of etcd's store revision.
type state struct {
	Exists bool
	Value  string
	ModRev int64 // when Exists: the key's mod revision; when Unsure, only the least it can be
	Unsure bool  // Value was written by an operation of unknown outcome, and no answer told its revision yet
	// Floor is the least the store's revision can be at this point:
	// the revision of the key's last write, or the revision the key's
	// last answer was read at. etcd's revision is one counter for the
	// whole store that only grows, so the key's next write is above
	// Floor, and its next answer at Floor or above, even after a
	// delete (a key deleted and written again does not start over).
	Floor int64
}

// step returns every state the key can be in after op, from s; none when
// op's result is impossible from s.
func step(s state, op Op) []state {
	if op.Unknown {
		if n, ok := applied(s, op); ok {
			return []state{s, n} // it may not have happened
		}
		return []state{s}
	}
	switch op.Kind {
	case Put:
		return wrote(s, op.Value, op.ModRev)
	case Get:
		if !op.Found {
			if s.Exists {
				return nil
			}
			return answered(s, op.Rev)
		}
		if !s.Exists || s.Value != op.Got || (!s.Unsure && s.ModRev != op.ModRev) || (s.Unsure && op.ModRev < s.ModRev) {
			return nil
		}
		s.ModRev, s.Unsure = op.ModRev, false // a read tells an unknown write's revision
		return answered(s, op.Rev)
	case Delete:
		if op.Succeeded != s.Exists {
			return nil
		}
		if !op.Succeeded {
			return answered(s, op.Rev) // deleting nothing makes no revision
		}
		if op.Rev <= s.Floor {
			return nil
		}
		return []state{{Floor: op.Rev}}
	case CAS:
		held, known := compare(s, op.Expect)
		if known && held != op.Succeeded {
			return nil
		}
		if !op.Succeeded {
			return answered(s, op.Rev) // a transaction that wrote nothing makes no revision
		}
		return wrote(s, op.Value, op.ModRev)
	}
	return nil
}

// wrote is the state after a write of value at revision rev, if rev is
// above every revision the key's history put before it.
func wrote(s state, value string, rev int64) []state {
	if rev <= s.Floor {
		return nil
	}
	return []state{{Exists: true, Value: value, ModRev: rev, Floor: rev}}
}

// answered is s as seen by an answer that changed nothing, read at the
// store's revision rev, which cannot be below one seen before.
func answered(s state, rev int64) []state {
	if rev < s.Floor {
		return nil
	}
	s.Floor = rev
	return []state{s}
}

// applied is the state after op, of unknown outcome, took effect, and
// whether it can change anything. Its revision is unknown, but above
// Floor: it took the next revision at the earliest.
func applied(s state, op Op) (state, bool) {
	next := s.Floor + 1
	switch op.Kind {
	case Put:
		return state{Exists: true, Value: op.Value, ModRev: next, Unsure: true, Floor: next}, true
	case Delete:
		if s.Exists {
			return state{Floor: next}, true
		}
	case CAS:
		if held, known := compare(s, op.Expect); held || !known {
			return state{Exists: true, Value: op.Value, ModRev: next, Unsure: true, Floor: next}, true
		}
	}
	return s, false
}

// compare is a CAS's comparison on s, and whether s says it. etcd
// compares the key's mod revision, which is 0 for a key that does not
// exist and at least 1 for one that does: so "absent" fails on a key
// that exists even when its revision is unknown, and so does a revision
// below the least an unknown write can have taken.
func compare(s state, expect int64) (held, known bool) {
	switch {
	case !s.Exists:
		return expect == 0, true
	case !s.Unsure:
		return s.ModRev == expect, true
	case expect < s.ModRev: // 0 among them
		return false, true
	default:
		return false, false
	}
}

// Model is etcd's key-value store for porcupine, partitioned by key.
var Model = (&porcupine.NondeterministicModel{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, o := range h {
			k := o.Input.(Op).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], o)
		}
		slices.Sort(keys)
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() []any { return []any{state{}} },
	Step: func(s, in, _ any) []any {
		var out []any
		for _, n := range step(s.(state), in.(Op)) {
			out = append(out, n)
		}
		return out
	},
	DescribeOperation: func(in, _ any) string { return in.(Op).String() },
	DescribeState: func(s any) string {
		st := s.(state)
		var d string
		switch {
		case !st.Exists:
			d = "absent"
		case st.Unsure:
			d = fmt.Sprintf("%q @≥%d (written by an operation of unknown outcome)", st.Value, st.ModRev)
		default:
			d = fmt.Sprintf("%q @%d", st.Value, st.ModRev)
		}
		if st.Floor > st.ModRev {
			d += fmt.Sprintf(", store @≥%d", st.Floor)
		}
		return d
	},
}).ToModel()

// String is an operation as the visualization and the report show it.
func (o Op) String() string {
	var call string
	switch o.Kind {
	case Put:
		call = fmt.Sprintf("put(%s, %q)", o.Key, o.Value)
	case Get:
		call = fmt.Sprintf("get(%s)", o.Key)
		if o.Serializable {
			call = fmt.Sprintf("get(%s, serializable)", o.Key)
		}
	case Delete:
		call = fmt.Sprintf("delete(%s)", o.Key)
	case CAS:
		call = fmt.Sprintf("cas(%s, if @%d, %q)", o.Key, o.Expect, o.Value)
	}
	switch {
	case o.Unknown:
		return call + " → unknown"
	case o.Failed:
		return call + " → failed"
	case o.Kind == Get && !o.Found:
		return call + " → absent"
	case o.Kind == Get:
		return fmt.Sprintf("%s → %q @%d", call, o.Got, o.ModRev)
	case o.Kind == Put:
		return fmt.Sprintf("%s → @%d", call, o.ModRev)
	case o.Kind == Delete:
		return fmt.Sprintf("%s → deleted %v @%d", call, o.Succeeded, o.Rev)
	default:
		return fmt.Sprintf("%s → %v @%d", call, o.Succeeded, o.ModRev)
	}
}

// Result is the outcome of Check.
type Result struct {
	// Linearizable: porcupine found a linearization of every key's
	// operations, and no answer's revision breaks the order of time
	// (Revisions is empty).
	Linearizable bool
	TimedOut     bool     // the checker gave up: neither proven nor refuted
	Checked      int      // operations in the linearizability check
	Revisions    []string // answers whose revision no etcd could have given, with the answer that rules it out
	info         porcupine.LinearizationInfo
}

// Check checks the linearizable part of ops: every operation that did
// not fail, but serializable reads, which may be stale by design (etcd
// serves them from one member's state). An operation of unknown outcome
// is given a return after every other one. A put or compare-and-swap of
// unknown outcome is left out when no other operation's result can
// depend on it, which keeps the search small when a member is down: no
// read returned its value (values are unique), and no compare-and-swap
// that failed or delete that deleted on its key returned after its call
// (either can owe its result to that write alone). Leaving one out
// cannot make a revision check fail: a write that did not happen takes
// no revision.
//
// porcupine checks each key on its own, which keeps the search small
// but cannot see that etcd's revision is one counter for every key; the
// answers' revisions are checked across keys too (see revisionOrder).
func Check(ops []Op, timeout time.Duration) Result {
	var h []porcupine.Operation
	var end time.Duration
	seen := map[string]bool{}
	revealed := map[string]time.Duration{} // by key: the last return of a failed CAS or a delete that deleted
	for _, o := range ops {
		end = max(end, o.Call, o.Return)
		switch {
		case o.Failed || o.Unknown:
		case o.Kind == Get && o.Found:
			seen[o.Key+"\x00"+o.Got] = true
		case (o.Kind == CAS || o.Kind == Delete) && o.Succeeded == (o.Kind == Delete):
			revealed[o.Key] = max(revealed[o.Key], o.Return)
		}
	}
	for _, o := range ops {
		if o.Failed || (o.Kind == Get && o.Serializable) {
			continue
		}
		if r, ok := revealed[o.Key]; o.Unknown && (o.Kind == Put || o.Kind == CAS) && !seen[o.Key+"\x00"+o.Value] && (!ok || r < o.Call) {
			continue
		}
		ret := o.Return
		if o.Unknown {
			ret = end + 1
		}
		h = append(h, porcupine.Operation{ClientId: o.Client, Input: o, Call: int64(o.Call), Output: o, Return: int64(ret)})
	}
	res, info := porcupine.CheckOperationsVerbose(Model, h, timeout)
	revs := revisionOrder(ops)
	return Result{
		Linearizable: res == porcupine.Ok && len(revs) == 0, TimedOut: res == porcupine.Unknown,
		Checked: len(h), Revisions: revs, info: info,
	}
}

// wrote is the revision an operation's write took, for one that changed
// the store: a put, a compare-and-swap that held, a delete that deleted.
// (A delete of nothing and a compare-and-swap that failed make no
// revision in etcd.)
func (o Op) wrote() (int64, bool) {
	switch {
	case o.Unknown || o.Failed:
		return 0, false
	case o.Kind == Put, o.Kind == CAS && o.Succeeded:
		return o.ModRev, true
	case o.Kind == Delete && o.Succeeded:
		return o.Rev, true
	}
	return 0, false
}

// revisionOrder lists the answers whose revisions etcd cannot have
// given, across keys. etcd's revision is one counter for the whole
// store, and a member serves only what the cluster committed, so once
// an answer at revision R came back (any answer, a serializable read's
// too) the store is at R or later:
//
//   - an operation that began after it returned, and is linearizable (a
//     write, a read but a serializable one), is answered at R or later;
//   - a write that began after it returned takes a revision above R;
//   - no two writes take one revision (each request here is one
//     transaction);
//   - no read sees a key written after the revision it was read at.
//
// A write of unknown outcome that a read saw (see revealed) is a write
// at the revision the read gives, for the second and third as much as
// one acknowledged: left out, it could take a revision another write
// took, or one acknowledged before it began.
//
// These are what a global model would check, in O(n log n) rather than
// in a search over every key at once.
func revisionOrder(ops []Op) []string {
	var out []string
	var acked, checked []Op
	var writes []write
	for _, o := range ops {
		if o.Unknown || o.Failed {
			continue
		}
		acked = append(acked, o)
		if w, ok := o.wrote(); ok {
			writes = append(writes, write{op: o, rev: w})
		} else if !(o.Kind == Get && o.Serializable) {
			checked = append(checked, o)
		}
		if o.Kind == Get && o.Found && o.ModRev > o.Rev {
			out = append(out, fmt.Sprintf("%s at %s was answered at revision %d, below the key's", o, ms(o.Call), o.Rev))
		}
	}
	writes = append(writes, revealed(ops)...)
	byRev := map[int64]write{}
	for _, w := range writes {
		if p, dup := byRev[w.rev]; dup {
			out = append(out, fmt.Sprintf("%s and %s both wrote at revision %d", p, w, w.rev))
		}
		byRev[w.rev] = w
	}

	// before(t) is the highest revision acknowledged by an answer that
	// returned before t, and that answer: the store's least revision for
	// whatever began at t. acked is sorted by return, with the running
	// highest beside it, so each question is one binary search.
	slices.SortStableFunc(acked, func(a, b Op) int { return cmp.Compare(a.Return, b.Return) })
	high := make([]int64, len(acked))
	by := make([]int, len(acked))
	for i, a := range acked {
		r := a.Rev
		if w, ok := a.wrote(); ok {
			r = max(r, w)
		}
		high[i], by[i] = r, i
		if i > 0 && high[i-1] >= r {
			high[i], by[i] = high[i-1], by[i-1]
		}
	}
	before := func(t time.Duration) (int64, Op) {
		n, _ := slices.BinarySearchFunc(acked, t, func(a Op, t time.Duration) int {
			if a.Return < t {
				return -1
			}
			return 1
		})
		if n == 0 {
			return 0, Op{}
		}
		return high[n-1], acked[by[n-1]]
	}

	// In the order they began, so the report reads as the run went.
	slices.SortStableFunc(writes, func(a, b write) int { return cmp.Compare(a.op.Call, b.op.Call) })
	for _, w := range writes {
		if h, b := before(w.op.Call); w.rev <= h {
			out = append(out, fmt.Sprintf("%s wrote at revision %d, not above revision %d of %s, acknowledged at %s before it began",
				w, w.rev, h, b, ms(b.Return)))
		}
	}
	slices.SortStableFunc(checked, func(a, b Op) int { return cmp.Compare(a.Call, b.Call) })
	for _, o := range checked {
		if h, b := before(o.Call); o.Rev < h {
			out = append(out, fmt.Sprintf("%s at %s was answered at revision %d, below revision %d of %s, acknowledged at %s before it began",
				o, ms(o.Call), o.Rev, h, b, ms(b.Return)))
		}
	}
	return out
}

// write is a revision a write took, as an answer tells it: the write's
// own, or, for a write of unknown outcome, that of a read that saw it.
type write struct {
	op   Op
	rev  int64
	read Op // when op.Unknown: the read that saw its value at rev
}

func (w write) String() string {
	if !w.op.Unknown {
		return fmt.Sprintf("%s at %s", w.op, ms(w.op.Call))
	}
	return fmt.Sprintf("%s at %s, read at revision %d by %s at %s,", w.op, ms(w.op.Call), w.rev, w.read, ms(w.read.Call))
}

// revealed lists the writes of unknown outcome (a put, a compare-and-
// swap) that a read saw, each at the mod revision the read gives. A
// value is written once in a run, so a read of a key that returns it
// names the one write that wrote it, and says that write was applied,
// at that revision. A serializable read counts: stale or not, what a
// member serves the cluster committed, at the revision it committed it
// at. A write many reads saw is listed once per revision they give:
// once, in any history etcd answers (the model refuses linearizable
// reads of one write at two revisions).
func revealed(ops []Op) []write {
	unknown := map[string]int{} // key and value: the index in ops of the unknown write of it
	for i, o := range ops {
		if o.Unknown && (o.Kind == Put || o.Kind == CAS) {
			unknown[o.Key+"\x00"+o.Value] = i
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	type at struct {
		op  int
		rev int64
	}
	listed := map[at]bool{}
	var out []write
	for _, o := range ops {
		if o.Kind != Get || !o.Found || o.Unknown || o.Failed {
			continue
		}
		i, ok := unknown[o.Key+"\x00"+o.Got]
		if !ok || listed[at{i, o.ModRev}] {
			continue
		}
		listed[at{i, o.ModRev}] = true
		out = append(out, write{op: ops[i], rev: o.ModRev, read: o})
	}
	return out
}

func ms(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

// WriteHTML writes porcupine's visualization of the checked history to
// path: each client's operations on a time line, per key, and, when the
// history is not linearizable, the longest linearization found with the
// operation that could not follow it.
func (r Result) WriteHTML(path string) error {
	if err := porcupine.VisualizePath(Model, r.info, path); err != nil {
		return fmt.Errorf("history: visualization: %w", err)
	}
	return nil
}

// Backwards lists, per client, each answer whose header revision is
// below that of the client's answer before it. Each client talks to one
// member, which never serves an older state than it served before, not
// even after a restart: etcd replays its log before it serves.
func Backwards(ops []Op) []string {
	byClient := map[int][]Op{}
	for _, o := range ops {
		if !o.Unknown && !o.Failed {
			byClient[o.Client] = append(byClient[o.Client], o)
		}
	}
	var out []string
	clients := slices.Sorted(maps.Keys(byClient))
	for _, c := range clients {
		list := byClient[c]
		slices.SortFunc(list, func(a, b Op) int { return cmp.Compare(a.Call, b.Call) })
		for i := 1; i < len(list); i++ {
			if list[i].Rev < list[i-1].Rev {
				out = append(out, fmt.Sprintf("client %d: %s at %s answered revision %d after %s at revision %d",
					c, list[i], list[i].Call.Round(time.Millisecond), list[i].Rev, list[i-1], list[i-1].Rev))
			}
		}
	}
	return out
}
