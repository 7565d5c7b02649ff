package history

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// at gives an operation its call and return, in milliseconds.
func at(call, ret int, o Op) Op {
	o.Call, o.Return = time.Duration(call)*time.Millisecond, time.Duration(ret)*time.Millisecond
	return o
}

func put(client int, key, value string, rev int64) Op {
	return Op{Client: client, Kind: Put, Key: key, Value: value, ModRev: rev, Rev: rev}
}

// get is a linearizable read answered at the key's mod revision; hdr
// gives it a later one.
func get(client int, key, value string, rev int64) Op {
	return Op{Client: client, Kind: Get, Key: key, Found: value != "", Got: value, ModRev: rev, Rev: rev}
}

func unknown(o Op) Op { o.Unknown, o.ModRev, o.Rev = true, 0, 0; return o }

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  []Op
		want bool
	}{
		{"a put, then a read of it", []Op{at(0, 10, put(0, "k1", "a", 2)), at(20, 30, get(1, "k1", "a", 2))}, true},
		{"a read during a put sees either", []Op{at(0, 30, put(0, "k1", "a", 2)), at(10, 20, hdr(1, get(1, "k1", "", 0)))}, true},
		{"a stale read", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, put(0, "k1", "b", 3)), at(40, 50, get(1, "k1", "a", 2)),
		}, false},
		{"a read of what was never written", []Op{at(0, 10, put(0, "k1", "a", 2)), at(20, 30, get(1, "k1", "z", 2))}, false},
		{"a read of the right value at another revision", []Op{at(0, 10, put(0, "k1", "a", 2)), at(20, 30, get(1, "k1", "a", 5))}, false},
		{"a write whose revision goes back", []Op{at(0, 10, put(0, "k1", "a", 5)), at(20, 30, put(1, "k1", "b", 4))}, false},
		{"an unknown put never seen", []Op{at(0, 10, put(0, "k1", "a", 2)), unknown(at(20, 0, put(1, "k1", "b", 0))), at(40, 50, get(2, "k1", "a", 2))}, true},
		{"an unknown put seen later", []Op{at(0, 10, put(0, "k1", "a", 2)), unknown(at(20, 0, put(1, "k1", "b", 0))), at(40, 50, get(2, "k1", "b", 7))}, true},
		{"an unknown put never read, revealed by a compare-and-swap that failed", []Op{
			at(0, 10, put(0, "k1", "a", 2)), unknown(at(20, 0, put(1, "k1", "b", 0))),
			at(40, 50, cas(2, "k1", 2, "c", false, 9)),
		}, true},
		{"an unknown put never read, revealed by a delete that deleted", []Op{
			unknown(at(0, 0, put(1, "k1", "b", 0))), at(40, 50, del(2, "k1", true, 9)),
		}, true},
		{"an unknown put seen, then what it overwrote", []Op{
			at(0, 10, put(0, "k1", "a", 2)), unknown(at(20, 0, put(1, "k1", "b", 0))), at(40, 50, get(2, "k1", "b", 7)), at(60, 70, get(2, "k1", "a", 2)),
		}, false},
		{"a compare-and-swap that held", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, cas(1, "k1", 2, "b", true, 3)), at(40, 50, get(2, "k1", "b", 3)),
		}, true},
		{"a compare-and-swap that held against the wrong revision", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, cas(1, "k1", 1, "b", true, 3)),
		}, false},
		{"a compare-and-swap that failed against the right revision", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, cas(1, "k1", 2, "b", false, 3)),
		}, false},
		{"a compare-and-swap on an absent key", []Op{at(0, 10, cas(1, "k1", 0, "b", true, 2)), at(20, 30, get(2, "k1", "b", 2))}, true},
		{"a delete, then the key is gone", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, del(1, "k1", true, 3)), at(40, 50, hdr(3, get(2, "k1", "", 0))),
		}, true},
		{"a deleted key read back", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, del(1, "k1", true, 3)), at(40, 50, hdr(3, get(2, "k1", "a", 2))),
		}, false},
		{"keys apart: a stale read of one key among others", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(0, 10, put(1, "k2", "x", 3)), at(20, 30, put(0, "k1", "b", 4)), at(40, 50, get(1, "k2", "x", 3)), at(40, 50, get(2, "k1", "a", 2)),
		}, false},
		{"a stale serializable read is not checked", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, put(0, "k1", "b", 3)), at(40, 50, Op{Client: 1, Kind: Get, Serializable: true, Key: "k1", Found: true, Got: "a", ModRev: 2, Rev: 2}),
		}, true},
		{"a failed write did not happen", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, Op{Client: 1, Kind: Put, Key: "k1", Value: "b", Failed: true}), at(40, 50, get(2, "k1", "a", 2)),
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Check(tc.ops, 10*time.Second)
			if r.TimedOut || r.Linearizable != tc.want {
				t.Errorf("linearizable %v (timed out %v), want %v", r.Linearizable, r.TimedOut, tc.want)
			}
		})
	}
}

// TestTheVisualizationShowsTheStaleRead: the HTML porcupine writes for a
// history with a stale read holds that read, as the report's link shows
// it to an operator.
func TestTheVisualizationShowsTheStaleRead(t *testing.T) {
	r := Check([]Op{
		at(0, 10, put(0, "k1", "a", 2)), at(20, 30, put(0, "k1", "b", 3)), at(40, 50, get(1, "k1", "a", 2)),
	}, 10*time.Second)
	if r.Linearizable {
		t.Fatal("a stale read passed")
	}
	path := filepath.Join(t.TempDir(), "history.html")
	if err := r.WriteHTML(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`get(k1) → \"a\" @2`, `put(k1, \"b\") → @3`, `\"b\" @3`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the visualization lacks %s", want)
		}
	}
}

// TestBackwards: a client's answers never go back in revision; the one
// that does is named, whatever the order they were recorded in.
func TestBackwards(t *testing.T) {
	ops := []Op{
		at(20, 30, get(0, "k1", "a", 2)), // recorded out of order
		at(0, 10, put(0, "k1", "a", 2)),
		at(0, 10, put(1, "k2", "x", 3)),
		at(40, 50, Op{Client: 0, Kind: Get, Serializable: true, Key: "k2"}),
		unknown(at(60, 0, put(1, "k2", "y", 0))),
	}
	ops[0].Rev, ops[3].Rev = 3, 3
	if b := Backwards(ops); len(b) != 0 {
		t.Fatalf("backwards in a forward history: %q", b)
	}
	ops = append(ops, at(70, 80, Op{Client: 0, Kind: Get, Serializable: true, Key: "k2", Rev: 2}))
	if b := Backwards(ops); len(b) != 1 || !strings.Contains(b[0], "client 0: get(k2, serializable) → absent at 70ms answered revision 2 after") {
		t.Errorf("backwards: %q", b)
	}
}

// hdr gives an operation the response header's revision it was answered at.
func hdr(rev int64, o Op) Op { o.Rev = rev; return o }

func cas(client int, key string, expect int64, value string, held bool, rev int64) Op {
	o := Op{Client: client, Kind: CAS, Key: key, Expect: expect, Value: value, Succeeded: held, Rev: rev}
	if held {
		o.ModRev = rev
	}
	return o
}

func del(client int, key string, deleted bool, rev int64) Op {
	return Op{Client: client, Kind: Delete, Key: key, Succeeded: deleted, Rev: rev}
}

// TestImpossibleHistories: histories no etcd can produce (issue 21),
// each with the revisions a real recording carries, fail the check: the
// model of each key on its own, or the revisions across keys (by says
// which; the other passes them).
func TestImpossibleHistories(t *testing.T) {
	for _, tc := range []struct {
		name string
		by   string // "model" or "revisions"
		ops  []Op
		says string // when set, in one of the revisions named
	}{
		// (a) The put of "b" was linearized after the delete (the last
		// read sees it), so its revision must exceed the delete's.
		{"a key's revision goes back after a delete", "model", []Op{
			at(0, 10, put(0, "k1", "a", 5)), at(5, 50, put(1, "k1", "b", 3)), at(20, 30, del(2, "k1", true, 6)),
			at(60, 70, hdr(6, get(3, "k1", "b", 3))),
		}, ""},
		// (b) The compare-and-swap failing says the unknown put of "b"
		// came after "a"@5, and "c", read last, came after it: at a
		// revision above 5, not 4.
		{"a key's revision goes back after an unknown write a failed compare-and-swap revealed", "model", []Op{
			at(0, 10, put(0, "k1", "a", 5)), unknown(at(20, 0, put(1, "k1", "b", 0))), at(5, 100, put(2, "k1", "c", 4)),
			at(40, 50, cas(3, "k1", 5, "d", false, 6)), at(110, 120, hdr(6, get(3, "k1", "c", 4))),
		}, ""},
		// (c) The first compare-and-swap failing says the unknown put
		// made the key exist; nothing deleted it before the second.
		{"a compare-and-swap expecting absent holds on a key that exists", "model", []Op{
			unknown(at(0, 0, put(0, "k1", "b", 0))), at(20, 30, cas(1, "k1", 0, "c", false, 2)), at(40, 50, cas(1, "k1", 0, "d", true, 3)),
		}, ""},
		// (d) Revision 5 was acknowledged before the read began: the
		// store it read was at 5 or later.
		{"a linearizable read at a revision below one acknowledged before it began", "revisions", []Op{
			at(0, 10, put(0, "k1", "a", 5)), at(20, 30, hdr(4, get(1, "k2", "", 0))),
		}, ""},
		// (e) etcd's revision is one counter for every key: a write that
		// began after revision 5 was acknowledged is above it.
		{"revisions out of order across keys", "revisions", []Op{
			at(0, 10, put(0, "k1", "a", 5)), at(20, 30, put(1, "k2", "x", 3)),
		}, ""},
		// The failed compare-and-swap says the unknown put of "b" came
		// after "a"@2, at 3 or later: the revision 2 is gone for good.
		{"a compare-and-swap expecting the revision an unknown write overwrote", "model", []Op{
			at(0, 10, put(0, "k1", "a", 2)), unknown(at(20, 0, put(1, "k1", "b", 0))),
			at(40, 50, cas(2, "k1", 2, "c", false, 3)), at(60, 70, cas(2, "k1", 2, "d", true, 4)),
		}, ""},
		// Each write is a revision of its own.
		{"two writes at one revision", "revisions", []Op{
			at(0, 10, put(0, "k1", "a", 5)), at(0, 10, put(1, "k2", "x", 5)),
		}, ""},
		// A write of unknown outcome that a read saw was applied, at the
		// mod revision the read gives (values are unique in a run): it
		// is a write at that revision like any other. Each key on its
		// own is possible, so only the revisions across keys can say.
		{"an unknown write read at the revision of a write to another key", "revisions", []Op{
			unknown(at(0, 0, put(0, "k1", "v", 0))), at(0, 10, put(1, "k2", "x", 10)),
			at(20, 30, get(2, "k1", "v", 10)),
		}, `put(k2, "x") → @10 at 0s and put(k1, "v") → unknown at 0s, read at revision 10 by get(k1) → "v" @10 at 20ms, both wrote at revision 10`},
		// Revision 10 was acknowledged before the unknown write began:
		// the store was at 10, and the write took a revision above it.
		// The read that saw it was answered at 10, which passes alone.
		{"an unknown write read at a revision below one acknowledged before it began", "revisions", []Op{
			at(0, 10, put(0, "k2", "x", 10)), unknown(at(20, 0, put(1, "k1", "v", 0))),
			at(30, 40, hdr(10, get(2, "k1", "v", 3))),
		}, `put(k1, "v") → unknown at 20ms, read at revision 3 by get(k1) → "v" @3 at 30ms, wrote at revision 3, not above revision 10 of put(k2, "x") → @10, acknowledged at 10ms before it began`},
		// Two writes of unknown outcome, each read at revision 10, one
		// by a serializable read: stale, maybe, but of a write etcd
		// committed, at the revision it committed it at.
		{"two unknown writes read at one revision", "revisions", []Op{
			unknown(at(0, 0, put(0, "k1", "v", 0))), unknown(at(0, 0, put(1, "k2", "w", 0))),
			at(20, 30, get(2, "k1", "v", 10)),
			at(20, 30, Op{Client: 3, Kind: Get, Serializable: true, Key: "k2", Found: true, Got: "w", ModRev: 10, Rev: 10}),
		}, "both wrote at revision 10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Check(tc.ops, 10*time.Second)
			if r.Linearizable || r.TimedOut {
				t.Errorf("linearizable %v (timed out %v), revisions %q; want false", r.Linearizable, r.TimedOut, r.Revisions)
			}
			if (tc.by == "revisions") != (len(r.Revisions) > 0) {
				t.Errorf("revisions %q, want them to be what rules it out: %v", r.Revisions, tc.by == "revisions")
			}
			if tc.says != "" && !slices.ContainsFunc(r.Revisions, func(s string) bool { return strings.Contains(s, tc.says) }) {
				t.Errorf("revisions %q, want one that says %s", r.Revisions, tc.says)
			}
		})
	}
}

// TestPossibleHistories: what etcd does answer, concurrent operations,
// writes of unknown outcome, stale serializable reads, compare-and-swaps
// that failed, passes, across keys too.
func TestPossibleHistories(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  []Op
	}{
		{"concurrent writes to two keys take their revisions in either order", []Op{
			at(0, 30, put(0, "k1", "a", 3)), at(10, 20, put(1, "k2", "x", 2)),
			at(40, 50, hdr(3, get(2, "k1", "a", 3))), at(40, 50, hdr(3, get(3, "k2", "x", 2))),
		}},
		{"a read during a write is answered before it", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 40, put(0, "k1", "b", 3)), at(25, 35, get(1, "k1", "a", 2)),
		}},
		{"a read that began before a write on another key returned is answered below it", []Op{
			at(0, 20, put(0, "k1", "a", 5)), at(10, 30, hdr(4, get(1, "k2", "", 0))),
		}},
		{"a read of another key at the store's revision", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, hdr(2, get(1, "k2", "", 0))), at(40, 50, hdr(7, get(1, "k2", "", 0))),
		}},
		{"an unknown write seen at a revision below a later write to another key", []Op{
			at(0, 10, put(0, "k1", "a", 2)), unknown(at(20, 0, put(1, "k1", "b", 0))), at(30, 40, put(2, "k2", "x", 4)),
			at(50, 60, hdr(4, get(3, "k1", "b", 3))),
		}},
		{"an unknown write a failed compare-and-swap revealed, then a write above it", []Op{
			at(0, 10, put(0, "k1", "a", 2)), unknown(at(20, 0, put(1, "k1", "b", 0))),
			at(40, 50, cas(2, "k1", 2, "c", false, 5)), at(60, 70, put(2, "k1", "d", 6)), at(80, 90, get(3, "k1", "d", 6)),
		}},
		{"an unknown write that may not have happened, though a failed compare-and-swap followed it", []Op{
			at(0, 10, put(0, "k1", "a", 2)), unknown(at(20, 0, put(1, "k1", "b", 0))), at(30, 40, put(2, "k1", "c", 3)),
			at(50, 60, cas(3, "k1", 2, "d", false, 3)), at(70, 80, get(3, "k1", "c", 3)),
		}},
		// The write began after revision 5 was acknowledged and before
		// 7 was; read at 6, by a linearizable read and a serializable
		// one: one write, one revision, above all acknowledged before.
		{"an unknown write read twice at a revision between writes to another key", []Op{
			at(0, 10, put(0, "k2", "x", 5)), unknown(at(20, 0, put(1, "k1", "v", 0))), at(30, 40, put(0, "k2", "y", 7)),
			at(50, 60, hdr(7, get(2, "k1", "v", 6))),
			at(70, 80, Op{Client: 3, Kind: Get, Serializable: true, Key: "k1", Found: true, Got: "v", ModRev: 6, Rev: 7}),
		}},
		// Begun before revision 5 was acknowledged, the write may have
		// taken a revision below it.
		{"an unknown write read below a revision acknowledged after it began", []Op{
			unknown(at(0, 0, put(1, "k1", "v", 0))), at(10, 20, put(0, "k2", "x", 5)),
			at(30, 40, hdr(5, get(2, "k1", "v", 4))),
		}},
		{"an unknown compare-and-swap that held", []Op{
			at(0, 10, put(0, "k1", "a", 2)), unknown(at(20, 0, cas(1, "k1", 2, "b", true, 0))), at(30, 40, get(2, "k1", "b", 3)),
		}},
		{"an unknown delete, then the key written again", []Op{
			at(0, 10, put(0, "k1", "a", 2)), unknown(at(20, 0, del(1, "k1", true, 0))), at(30, 40, hdr(3, get(2, "k1", "", 0))),
			at(50, 60, put(2, "k1", "b", 4)), at(70, 80, get(3, "k1", "b", 4)),
		}},
		{"a delete of nothing and a compare-and-swap that failed take no revision", []Op{
			at(0, 10, del(0, "k1", false, 1)), at(20, 30, put(0, "k1", "a", 2)), at(40, 50, cas(1, "k1", 1, "b", false, 2)),
			at(60, 70, del(1, "k1", true, 3)), at(80, 90, del(2, "k1", false, 3)), at(100, 110, put(2, "k1", "c", 4)),
			at(120, 130, hdr(4, get(3, "k2", "", 0))),
		}},
		{"two compare-and-swaps race: one holds, the other fails after it", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 40, cas(1, "k1", 2, "b", true, 3)), at(20, 40, cas(2, "k1", 2, "c", false, 3)),
		}},
		{"a stale serializable read, and one that acknowledged a revision", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, put(0, "k1", "b", 3)),
			at(40, 50, Op{Client: 1, Kind: Get, Serializable: true, Key: "k1", Found: true, Got: "a", ModRev: 2, Rev: 2}),
			at(40, 50, Op{Client: 2, Kind: Get, Serializable: true, Key: "k2", Rev: 3}),
			at(60, 70, hdr(3, get(3, "k2", "", 0))), at(60, 70, get(1, "k1", "b", 3)),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Check(tc.ops, 10*time.Second)
			if !r.Linearizable || r.TimedOut {
				t.Errorf("linearizable %v (timed out %v), revisions %q; want true", r.Linearizable, r.TimedOut, r.Revisions)
			}
		})
	}
}
