package chaos

import (
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/olekukonko/tablewriter"

	"etcdimg/testvm/chaos/history"
)

// Done is a fault as it happened: when it began and when it was healed
// (since the run began), and what it hit.
type Done struct {
	Fault
	Target         string        // the member it hit ("" for every member or the whole LAN)
	Began, Healed  time.Duration //
	Err            string        // injecting or healing it failed
	RecoveredAfter time.Duration // from Began to the first write acknowledged after it; -1 if none
	CaughtUpAfter  time.Duration // from Healed until every member applied what was committed at Healed; -1 if never
	Availability   float64       // share of requests between Began and Healed that succeeded
}

// Sample is one member's record, in etcd's raft log on its console,
// that a leader held a term: for "at most one leader per term". etcd's
// Status is no snapshot (its leader and term are read apart, and a
// member between elections pairs the new term with the old leader), so
// the check reads raft's own lines, written when the leader changes.
type Sample struct {
	Member string
	Term   uint64
	Leader uint64 // member ID
}

var (
	electedRE = regexp.MustCompile(`raft\.node: ([0-9a-f]+) elected leader ([0-9a-f]+) at term (\d+)`)
	becameRE  = regexp.MustCompile(`"([0-9a-f]+) became leader at term (\d+)"`)
)

// LeaderSamples reads a member's console for raft's leader lines.
func LeaderSamples(member string, console []byte) []Sample {
	var out []Sample
	for _, m := range electedRE.FindAllSubmatch(console, -1) {
		leader, _ := strconv.ParseUint(string(m[2]), 16, 64)
		term, _ := strconv.ParseUint(string(m[3]), 10, 64)
		out = append(out, Sample{Member: member, Term: term, Leader: leader})
	}
	for _, m := range becameRE.FindAllSubmatch(console, -1) {
		leader, _ := strconv.ParseUint(string(m[1]), 16, 64)
		term, _ := strconv.ParseUint(string(m[2]), 10, 64)
		out = append(out, Sample{Member: member, Term: term, Leader: leader})
	}
	return out
}

// Verdict is the outcome of a run's checks.
type Verdict struct {
	Requests, OK, Failed, Unknown int
	Linearizable                  bool
	CheckTimedOut                 bool
	Backwards                     []string // revisions that went back for a client
	Revisions                     []string // answers at revisions no etcd could give (history.Result.Revisions)
	Diverged                      []string // keys whose final value differs between members
	ClusterID                     string   // "" if unchanged, else what changed
	TwoLeaders                    []string // terms with two leaders
	FaultErrors                   []string
}

// Passed reports whether every check passed.
func (v Verdict) Passed() bool {
	return v.Linearizable && !v.CheckTimedOut && len(v.Backwards) == 0 && len(v.Revisions) == 0 && len(v.Diverged) == 0 &&
		v.ClusterID == "" && len(v.TwoLeaders) == 0 && len(v.FaultErrors) == 0
}

// Measure fills in each fault's recovery and availability from the
// history.
func Measure(done []Done, ops []history.Op) {
	writes := slices.DeleteFunc(slices.Clone(ops), func(o history.Op) bool {
		return o.Kind == history.Get || o.Unknown || o.Failed
	})
	slices.SortFunc(writes, func(a, b history.Op) int { return int(a.Return - b.Return) })
	for i := range done {
		d := &done[i]
		d.RecoveredAfter = -1
		for _, w := range writes {
			if w.Call >= d.Began {
				d.RecoveredAfter = w.Return - d.Began
				break
			}
		}
		var n, ok int
		for _, o := range ops {
			if o.Call >= d.Began && o.Call <= d.Healed {
				n++
				if !o.Unknown && !o.Failed {
					ok++
				}
			}
		}
		if n > 0 {
			d.Availability = float64(ok) / float64(n)
		}
	}
}

// TwoLeaders lists the terms in which members named two different
// leaders.
func TwoLeaders(samples []Sample) []string {
	leaders := map[uint64]map[uint64][]string{}
	for _, s := range samples {
		if s.Leader == 0 {
			continue
		}
		if leaders[s.Term] == nil {
			leaders[s.Term] = map[uint64][]string{}
		}
		leaders[s.Term][s.Leader] = append(leaders[s.Term][s.Leader], s.Member)
	}
	var out []string
	for _, term := range slices.Sorted(maps.Keys(leaders)) {
		if len(leaders[term]) > 1 {
			var who []string
			for _, id := range slices.Sorted(maps.Keys(leaders[term])) {
				who = append(who, fmt.Sprintf("%x (seen by %s)", id, strings.Join(slices.Compact(slices.Sorted(slices.Values(leaders[term][id]))), ", ")))
			}
			out = append(out, fmt.Sprintf("term %d: leaders %s", term, strings.Join(who, " and ")))
		}
	}
	return out
}

// Tally counts a history's requests by outcome.
func Tally(ops []history.Op) (ok, failed, unknown int) {
	for _, o := range ops {
		switch {
		case o.Unknown:
			unknown++
		case o.Failed:
			failed++
		default:
			ok++
		}
	}
	return
}

// Print writes the report's tables: the requests, each fault, the checks.
func Print(w io.Writer, v Verdict, done []Done) {
	fmt.Fprintf(w, "requests: %d (%d ok, %d failed, %d of unknown outcome)\n", v.Requests, v.OK, v.Failed, v.Unknown)
	t := tablewriter.NewWriter(w)
	t.Header("FAULT", "TARGET", "BEGAN", "HEALED", "WRITES AGAIN AFTER", "AVAILABILITY", "CAUGHT UP AFTER HEAL", "ERROR")
	for _, d := range done {
		again := seconds(d.RecoveredAfter)
		name := d.Kind
		if d.Variant != "" {
			name += " " + d.Variant
		}
		t.Append(name, d.Target, d.Began.Round(100*time.Millisecond).String(), d.Healed.Round(100*time.Millisecond).String(),
			again, fmt.Sprintf("%.0f %%", 100*d.Availability), seconds(d.CaughtUpAfter), d.Err)
	}
	t.Render()
	check := func(name string, ok bool, detail []string) {
		verdict := "pass"
		if !ok {
			verdict = "FAIL"
		}
		fmt.Fprintf(w, "  %-52s %s\n", name, verdict)
		for _, d := range detail {
			fmt.Fprintf(w, "      %s\n", d)
		}
	}
	fmt.Fprintln(w, "checks:")
	lin := []string(nil)
	if v.CheckTimedOut {
		lin = []string{"the checker timed out: neither proven nor refuted"}
	}
	check("history linearizable (porcupine, etcd's KV model)", v.Linearizable && !v.CheckTimedOut, lin)
	check("revisions never go back for a client", len(v.Backwards) == 0, first(v.Backwards, 5))
	check("revisions agree with what was acknowledged before", len(v.Revisions) == 0, first(v.Revisions, 5))
	check("every member ends with the same values", len(v.Diverged) == 0, first(v.Diverged, 5))
	var id []string
	if v.ClusterID != "" {
		id = []string{v.ClusterID}
	}
	check("cluster ID unchanged", v.ClusterID == "", id)
	check("at most one leader per term", len(v.TwoLeaders) == 0, first(v.TwoLeaders, 5))
	check("every fault injected and healed", len(v.FaultErrors) == 0, first(v.FaultErrors, 5))
	if v.Passed() {
		fmt.Fprintln(w, "verdict: PASS")
	} else {
		fmt.Fprintln(w, "verdict: FAIL")
	}
}

// seconds prints a measured interval, -1 as "never".
func seconds(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return d.Round(10 * time.Millisecond).String()
}

func first(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("… and %d more", len(s)-n))
	}
	return s
}

// Report prints the report (Print) on w and into dir/report.txt; a failed
// check is an error that names dir, where the evidence is.
func Report(w io.Writer, dir string, v Verdict, done []Done) error {
	report, err := os.Create(filepath.Join(dir, "report.txt"))
	if err != nil {
		return err
	}
	Print(io.MultiWriter(w, report), v, done)
	if err := report.Close(); err != nil {
		return err
	}
	if !v.Passed() {
		return fmt.Errorf("chaos: a check failed; the history, its visualization (history.html) and the consoles are in %s", dir)
	}
	return nil
}
