package history

import (
	"os"
	"path/filepath"
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

func get(client int, key, value string, rev int64) Op {
	return Op{Client: client, Kind: Get, Key: key, Found: value != "", Got: value, ModRev: rev}
}

func unknown(o Op) Op { o.Unknown, o.ModRev, o.Rev = true, 0, 0; return o }

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  []Op
		want bool
	}{
		{"a put, then a read of it", []Op{at(0, 10, put(0, "k1", "a", 2)), at(20, 30, get(1, "k1", "a", 2))}, true},
		{"a read during a put sees either", []Op{at(0, 30, put(0, "k1", "a", 2)), at(10, 20, get(1, "k1", "", 0))}, true},
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
			at(40, 50, Op{Client: 2, Kind: CAS, Key: "k1", Expect: 2, Value: "c", Succeeded: false, Rev: 9}),
		}, true},
		{"an unknown put never read, revealed by a delete that deleted", []Op{
			unknown(at(0, 0, put(1, "k1", "b", 0))), at(40, 50, Op{Client: 2, Kind: Delete, Key: "k1", Succeeded: true, Rev: 9}),
		}, true},
		{"an unknown put seen, then what it overwrote", []Op{
			at(0, 10, put(0, "k1", "a", 2)), unknown(at(20, 0, put(1, "k1", "b", 0))), at(40, 50, get(2, "k1", "b", 7)), at(60, 70, get(2, "k1", "a", 2)),
		}, false},
		{"a compare-and-swap that held", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, Op{Client: 1, Kind: CAS, Key: "k1", Expect: 2, Value: "b", Succeeded: true, ModRev: 3}), at(40, 50, get(2, "k1", "b", 3)),
		}, true},
		{"a compare-and-swap that held against the wrong revision", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, Op{Client: 1, Kind: CAS, Key: "k1", Expect: 1, Value: "b", Succeeded: true, ModRev: 3}),
		}, false},
		{"a compare-and-swap that failed against the right revision", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, Op{Client: 1, Kind: CAS, Key: "k1", Expect: 2, Value: "b", Succeeded: false, Rev: 3}),
		}, false},
		{"a compare-and-swap on an absent key", []Op{at(0, 10, Op{Client: 1, Kind: CAS, Key: "k1", Expect: 0, Value: "b", Succeeded: true, ModRev: 2}), at(20, 30, get(2, "k1", "b", 2))}, true},
		{"a delete, then the key is gone", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, Op{Client: 1, Kind: Delete, Key: "k1", Succeeded: true, Rev: 3}), at(40, 50, get(2, "k1", "", 0)),
		}, true},
		{"a deleted key read back", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, Op{Client: 1, Kind: Delete, Key: "k1", Succeeded: true, Rev: 3}), at(40, 50, get(2, "k1", "a", 2)),
		}, false},
		{"keys apart: a stale read of one key among others", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(0, 10, put(1, "k2", "x", 3)), at(20, 30, put(0, "k1", "b", 4)), at(40, 50, get(1, "k2", "x", 3)), at(40, 50, get(2, "k1", "a", 2)),
		}, false},
		{"a stale serializable read is not checked", []Op{
			at(0, 10, put(0, "k1", "a", 2)), at(20, 30, put(0, "k1", "b", 3)), at(40, 50, Op{Client: 1, Kind: Get, Serializable: true, Key: "k1", Found: true, Got: "a", ModRev: 2}),
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
