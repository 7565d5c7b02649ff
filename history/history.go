// Package history is what `etcdimg chaos` records and checks: the
// operations its clients made against a cluster, each with its call and
// return time and its result, and the check that the history is
// linearizable against a model of etcd's key-value store, with porcupine
// (the checker of etcd's own robustness tests).
//
// The model is per key: a key's state is whether it exists, its value and
// its mod revision. Writes carry values that are unique in a run, so a
// read names the write it saw. An operation whose outcome is unknown (it
// timed out, or failed in a way that does not say whether etcd applied
// it) may have happened or not, at any time after its call.
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
	ModRev    int64  // get: the key's mod revision; put, cas, delete: the revision of the write
	Succeeded bool   // cas: the comparison held; delete: a key was deleted
	Rev       int64  // the response header's revision
}

// state is one key's state in the model.
type state struct {
	Exists bool
	Value  string
	ModRev int64 // -1: written by an operation of unknown outcome, revision not known
}

// step returns every state the key can be in after op, from s; none when
// op's result is impossible from s.
func step(s state, op Op) []state {
	if op.Unknown {
		return []state{s, applied(s, op)} // it may not have happened
	}
	switch op.Kind {
	case Put:
		if s.ModRev >= 0 && op.ModRev <= s.ModRev {
			return nil // revisions only grow
		}
		return []state{{true, op.Value, op.ModRev}}
	case Get:
		if !op.Found {
			if s.Exists {
				return nil
			}
			return []state{s}
		}
		if !s.Exists || s.Value != op.Got || (s.ModRev >= 0 && s.ModRev != op.ModRev) {
			return nil
		}
		return []state{{true, s.Value, op.ModRev}} // a read tells an unknown write's revision
	case Delete:
		if op.Succeeded != s.Exists {
			return nil
		}
		return []state{{}}
	case CAS:
		held, known := compare(s, op.Expect)
		if known && held != op.Succeeded {
			return nil
		}
		if !op.Succeeded {
			return []state{s}
		}
		if s.ModRev >= 0 && op.ModRev <= s.ModRev {
			return nil
		}
		return []state{{true, op.Value, op.ModRev}}
	}
	return nil
}

// applied is the state after op took effect, its revision unknown.
func applied(s state, op Op) state {
	switch op.Kind {
	case Put:
		return state{true, op.Value, -1}
	case Delete:
		return state{}
	case CAS:
		if held, known := compare(s, op.Expect); held || !known {
			return state{true, op.Value, -1}
		}
	}
	return s
}

// compare is a CAS's comparison on s, and whether s says it.
func compare(s state, expect int64) (held, known bool) {
	switch {
	case !s.Exists:
		return expect == 0, true
	case s.ModRev < 0:
		return false, false
	default:
		return s.ModRev == expect, true
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
		switch {
		case !st.Exists:
			return "absent"
		case st.ModRev < 0:
			return fmt.Sprintf("%q (revision unknown)", st.Value)
		default:
			return fmt.Sprintf("%q @%d", st.Value, st.ModRev)
		}
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
	Linearizable bool
	TimedOut     bool // the checker gave up: neither proven nor refuted
	Checked      int  // operations in the linearizability check
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
// (either can owe its result to that write alone).
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
	return Result{Linearizable: res == porcupine.Ok, TimedOut: res == porcupine.Unknown, Checked: len(h), info: info}
}

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
