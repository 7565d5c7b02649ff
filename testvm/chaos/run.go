package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"etcdimg/cluster"
	"etcdimg/cluster/health"
	"etcdimg/testvm"
	"etcdimg/testvm/chaos/history"
	"etcdimg/testvm/chaos/workload"
	"etcdimg/testvm/local"
)

// Options are a run's settings (the command's flags).
type Options struct {
	Duration time.Duration
	Plan     []Fault // from Schedule
	Clients  int
	Keys     int
	Seed     uint64
	Images   map[string]string // member → the image replace and roll boot (built from the current spec)
	// UpgradeImages are the upgrade fault's images, by variant, then
	// member (UpgradeDirs); NodeAPI reaches the members' node APIs and
	// Trial bounds a member's wait for its new slot.
	UpgradeImages map[string]map[string]string
	NodeAPI       *cluster.NodeAPI
	Trial         time.Duration
	Dir           string    // where the run's files go (DIR/chaos/<time>)
	Log           io.Writer // progress lines
}

// Run drives traffic against the local cluster st (through e, the
// admin's view of it) while the scheduled faults are injected and
// healed, then checks the history and writes the report's files to
// o.Dir. The caller holds the cluster's run lock.
func Run(ctx context.Context, st *local.State, e *cluster.Etcd, o Options) (Verdict, []Done, error) {
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return Verdict{}, nil, fmt.Errorf("chaos: %w", err)
	}
	before, err := clusterID(ctx, e)
	if err != nil {
		return Verdict{}, nil, fmt.Errorf("chaos: the cluster is not healthy before the run: %w", err)
	}
	prefix := fmt.Sprintf("/chaos/%d/", time.Now().UnixNano())
	start := time.Now()
	logf := func(format string, args ...any) {
		fmt.Fprintf(o.Log, "%6.1fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	// Traffic, and the members' cluster IDs every 2 s.
	wctx, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	var ops []history.Op
	var werr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ops, werr = workload.Run(wctx, workload.Config{
			Endpoints: e.URLs(), TLS: e.TLS, Clients: o.Clients, Keys: o.Keys, Prefix: prefix,
			Seed: o.Seed, Timeout: 3 * time.Second, Start: start,
		})
	}()
	var ids []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for wctx.Err() == nil {
			for _, s := range e.Statuses(wctx, time.Second) {
				if s.Err == nil && s.ClusterID != before {
					ids = append(ids, fmt.Sprintf("%s answered with cluster ID %x, the run began with %x", s.Name, s.ClusterID, before))
				}
			}
			select {
			case <-wctx.Done():
			case <-time.After(2 * time.Second):
			}
		}
	}()
	r := &runner{st: st, e: e, o: o, rnd: rand.New(rand.NewPCG(o.Seed, 1)), boots: map[string]int{}, logf: logf}

	// The faults, one after the other.
	var done []Done
	for _, f := range o.Plan {
		if wait := f.At - time.Since(start); wait > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
		if ctx.Err() != nil {
			break
		}
		logf("%s: begins", f)
		d := Done{Fault: f, Began: time.Since(start), CaughtUpAfter: -1}
		heal, target, err := r.inject(ctx, f)
		d.Target = target
		logf("%s %s: injected", f.Kind+variant(f), target)
		if err == nil {
			select {
			case <-ctx.Done():
			case <-time.After(f.For):
			}
			err = heal()
		}
		d.Healed = time.Since(start)
		if err == nil {
			d.CaughtUpAfter, err = caughtUp(ctx, e, 3*time.Minute)
		}
		if err == nil {
			err = waitHealthy(ctx, e, 3*time.Minute)
		}
		if err != nil {
			d.Err = err.Error()
		}
		logf("%s %s: healed; every member caught up %.1fs and the cluster healthy %.1fs after", f.Kind+variant(f), target,
			d.CaughtUpAfter.Seconds(), (time.Since(start) - d.Healed).Seconds())
		done = append(done, d)
	}
	if wait := max(o.Duration-time.Since(start), Cooldown); ctx.Err() == nil {
		logf("traffic alone for %.0fs, then the checks", wait.Seconds())
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	stopTraffic()
	wg.Wait()
	if werr != nil {
		return Verdict{}, done, werr
	}

	// Every member's final values, read through that member, join the
	// history as linearizable reads after everything else.
	final, diverged := finalReads(ctx, e, prefix, o.Keys, time.Since(start))
	all := append(slices.Clone(ops), final...)
	Measure(done, ops)
	var samples []Sample
	for _, m := range st.Members {
		if err := r.keepConsole(m.Name); err != nil {
			return Verdict{}, done, err
		}
		b, err := os.ReadFile(filepath.Join(o.Dir, m.Name+"-console.log"))
		if err != nil {
			return Verdict{}, done, fmt.Errorf("chaos: %w", err)
		}
		samples = append(samples, LeaderSamples(m.Name, b)...)
	}
	v := Verdict{Requests: len(ops), Diverged: diverged, TwoLeaders: TwoLeaders(samples), Backwards: history.Backwards(ops)}
	v.OK, v.Failed, v.Unknown = Tally(ops)
	if len(ids) > 0 {
		v.ClusterID = ids[0]
	}
	for _, d := range done {
		if d.Err != "" {
			v.FaultErrors = append(v.FaultErrors, fmt.Sprintf("%s %s: %s", d.Kind+variant(d.Fault), d.Target, d.Err))
		}
	}
	res := history.Check(all, 5*time.Minute)
	v.Linearizable, v.CheckTimedOut, v.Revisions = res.Linearizable, res.TimedOut, res.Revisions
	if err := writeFiles(o.Dir, all, done, res); err != nil {
		return v, done, err
	}
	return v, done, nil
}

func variant(f Fault) string {
	if f.Variant == "" {
		return ""
	}
	return " " + f.Variant
}

// runner is one run's faults: the cluster, and the consoles kept.
type runner struct {
	st    *local.State
	e     *cluster.Etcd
	o     Options
	rnd   *rand.Rand
	boots map[string]int // consoles kept per member
	logf  func(format string, args ...any)
}

// keepConsole appends member name's console, as it is now, to the
// run's record of it: a member booted again starts a new console file.
func (r *runner) keepConsole(name string) error {
	m, err := r.st.Member(name)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(m.Console)
	if err != nil {
		return fmt.Errorf("chaos: console of %s: %w", name, err)
	}
	r.boots[name]++
	f, err := os.OpenFile(filepath.Join(r.o.Dir, name+"-console.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("chaos: %w", err)
	}
	fmt.Fprintf(f, "===== %s, boot %d of this run's record =====\n", name, r.boots[name])
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// boot returns how to boot the named members again, keeping their
// consoles first.
func (r *runner) boot(names ...string) func() error {
	return func() error {
		for _, n := range names {
			if err := r.keepConsole(n); err != nil {
				return err
			}
			if err := r.st.Start(n); err != nil {
				return fmt.Errorf("boot %s again: %w", n, err)
			}
		}
		return nil
	}
}

// lifecycle is `etcdimg replace` and `roll` on this cluster, under the
// lock the run holds, saying its steps in the run's log.
func (r *runner) lifecycle() *cluster.Lifecycle {
	var names []string
	for _, m := range r.st.Members {
		names = append(names, m.Name)
	}
	return &cluster.Lifecycle{
		Etcd:    r.e,
		Driver:  &local.Driver{State: r.st, BeforeBoot: r.keepConsole},
		Members: names,
		Timeout: 5 * time.Minute,
		Say:     func(step string, took time.Duration) { r.logf("    %s (%.1fs)", step, took.Seconds()) },
	}
}

// inject starts fault f and returns how to heal it, and whom it hit.
func (r *runner) inject(ctx context.Context, f Fault) (func() error, string, error) {
	st := r.st
	none := func() error { return nil }
	member := f.Member
	var minority []string // split: the leader and as many followers as keep it a minority
	if f.Kind == Kill || (f.Kind == Partition && f.Variant == "split") {
		leader, followers, err := roles(ctx, r.e)
		if err != nil {
			return none, "", err
		}
		member = leader
		if f.Variant == "follower" {
			member = followers[r.rnd.IntN(len(followers))]
		}
		minority = append([]string{leader}, followers[:(len(st.Members)-1)/2-1]...)
	}
	switch f.Kind {
	case Kill:
		return r.boot(member), member, st.Kill(member)
	case PowerOff:
		_, err := st.Stop(member, time.Minute)
		return r.boot(member), member, err
	case PowerCut:
		var names []string
		for _, m := range st.Members {
			names = append(names, m.Name)
			if err := st.Kill(m.Name); err != nil {
				return r.boot(names...), "every member", err
			}
		}
		return r.boot(names...), "every member", nil
	case Partition:
		heal := func() error { return testvm.SetLANRules(st.SwitchSocket, testvm.LANRules{}) }
		side := minority
		if f.Variant != "split" {
			side = []string{member}
		}
		var in, out []string
		for _, m := range st.Members {
			mac, err := m.MAC()
			if err != nil {
				return none, member, err
			}
			if slices.Contains(side, m.Name) {
				in = append(in, mac)
			} else {
				out = append(out, mac)
			}
		}
		rules := testvm.LANRules{Sides: [][]string{in, out}}
		if f.Variant == "lossy" {
			rules = testvm.LANRules{Lossy: in, Loss: 0.3}
		}
		return heal, strings.Join(side, ","), testvm.SetLANRules(st.SwitchSocket, rules)
	case Replace, Roll:
		if r.o.Images == nil {
			return none, member, fmt.Errorf("chaos: %s needs the members' images; none were built for this run", f.Kind)
		}
		if f.Kind == Replace {
			return none, member, r.lifecycle().Replace(ctx, member, cluster.ReplaceOptions{Image: r.o.Images[member], KeepDisk: f.Variant == Keep})
		}
		return none, "every member", r.lifecycle().Roll(ctx, r.o.Images, cluster.RollOptions{KeepDisks: f.Variant == Keep})
	case Upgrade:
		imgs := r.o.UpgradeImages[f.Variant]
		if imgs == nil || r.o.NodeAPI == nil {
			return none, member, fmt.Errorf("chaos: upgrade %s needs its images and the node API; none were prepared for this run", f.Variant)
		}
		u := &cluster.Upgrader{API: r.o.NodeAPI, Trial: r.o.Trial}
		l := r.lifecycle()
		l.Driver = u
		if f.Variant == GoodUpgrade {
			_, err := l.Upgrade(ctx, u, imgs, nil)
			return none, "every member", err
		}
		// Another cluster's image, signed with this cluster's key: the
		// member must refuse it before anything is written or rebooted.
		err := u.Swap(ctx, member, imgs[member], true, l.Say)
		switch {
		case err == nil:
			return none, member, fmt.Errorf("chaos: %s installed another cluster's image", member)
		case !strings.Contains(err.Error(), "another cluster's output directory"):
			return none, member, fmt.Errorf("chaos: %s did not refuse another cluster's image as such: %w", member, err)
		}
		r.logf("    %s refused another cluster's image: %v", member, err)
		return none, member, nil
	}
	return none, member, fmt.Errorf("chaos: %s is not a fault chaos runs know", f.Kind)
}

// caughtUp waits until every member has applied everything the cluster
// had committed when it was first asked (the highest commit index the
// members that answered reported), and returns how long that took.
func caughtUp(ctx context.Context, e *cluster.Etcd, bound time.Duration) (time.Duration, error) {
	start := time.Now()
	var target uint64
	for {
		sts := e.Statuses(ctx, time.Second)
		if target == 0 {
			for _, s := range sts {
				if s.Err == nil {
					target = max(target, s.RaftIndex)
				}
			}
		}
		var behind []string
		for _, s := range sts {
			switch {
			case s.Err != nil:
				behind = append(behind, fmt.Sprintf("%s: %v", s.Name, s.Err))
			case s.Applied < target:
				behind = append(behind, fmt.Sprintf("%s applied %d of %d", s.Name, s.Applied, target))
			}
		}
		if target != 0 && len(behind) == 0 {
			return time.Since(start), nil
		}
		if time.Since(start) > bound {
			return -1, fmt.Errorf("not caught up within %s: %s", bound, strings.Join(behind, "; "))
		}
		select {
		case <-ctx.Done():
			return -1, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// roles names the leader and the followers, as the members see them now.
func roles(ctx context.Context, e *cluster.Etcd) (string, []string, error) {
	snap, err := e.Observe(ctx)
	if err != nil {
		return "", nil, err
	}
	leader, ok := snap.Leader()
	if !ok {
		return "", nil, fmt.Errorf("no leader")
	}
	var followers []string
	for _, name := range slices.Sorted(maps.Keys(snap.Status)) {
		if name != leader.Name {
			followers = append(followers, name)
		}
	}
	if len(followers) == 0 {
		return "", nil, fmt.Errorf("no follower answers")
	}
	return leader.Name, followers, nil
}

// waitHealthy waits until every member answers a health check.
func waitHealthy(ctx context.Context, e *cluster.Etcd, bound time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	rs := health.Wait(ctx, e.Endpoints, e.TLS, 2*time.Second, 250*time.Millisecond)
	if !health.Healthy(rs) {
		for _, r := range rs {
			if !r.Healthy {
				return fmt.Errorf("%s not healthy within %s: %s", r.Member, bound, r.Err)
			}
		}
	}
	return nil
}

// clusterID is the cluster's ID, which every member must report.
func clusterID(ctx context.Context, e *cluster.Etcd) (uint64, error) {
	if err := waitHealthy(ctx, e, time.Minute); err != nil {
		return 0, err
	}
	var id uint64
	for _, s := range e.Statuses(ctx, 5*time.Second) {
		if s.Err != nil {
			return 0, fmt.Errorf("%s: %w", s.Name, s.Err)
		}
		if id != 0 && s.ClusterID != id {
			return 0, fmt.Errorf("%s reports cluster %x, another member %x", s.Name, s.ClusterID, id)
		}
		id = s.ClusterID
	}
	return id, nil
}

// finalReads reads every key through every member, linearizably: the
// reads, as history operations after at, and the keys whose values
// differ between members.
func finalReads(ctx context.Context, e *cluster.Etcd, prefix string, keys int, at time.Duration) ([]history.Op, []string) {
	var ops []history.Op
	var diverged []string
	values := map[string]map[string]string{}
	for i, ep := range e.Endpoints {
		cli, err := e.Client(ep.URL)
		if err != nil {
			diverged = append(diverged, fmt.Sprintf("%s: %v", ep.Member, err))
			continue
		}
		for k := range keys {
			key := fmt.Sprintf("%sk%d", prefix, k)
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			r, err := cli.Get(rctx, key)
			cancel()
			op := history.Op{Client: 1000 + i, Kind: history.Get, Key: key, Call: at, Return: at}
			if err != nil {
				diverged = append(diverged, fmt.Sprintf("%s: read %s: %v", ep.Member, key, err))
				continue
			}
			op.Rev = r.Header.Revision
			if len(r.Kvs) > 0 {
				op.Found, op.Got, op.ModRev = true, string(r.Kvs[0].Value), r.Kvs[0].ModRevision
			}
			ops = append(ops, op)
			if values[key] == nil {
				values[key] = map[string]string{}
			}
			values[key][ep.Member] = fmt.Sprintf("%q@%d", op.Got, op.ModRev)
		}
		cli.Close()
	}
	for _, key := range slices.Sorted(maps.Keys(values)) {
		seen := map[string]bool{}
		for _, v := range values[key] {
			seen[v] = true
		}
		if len(seen) > 1 {
			diverged = append(diverged, fmt.Sprintf("%s: %v", key, values[key]))
		}
	}
	return ops, diverged
}

// writeFiles writes the run's files: the history, the faults and the
// visualization (the consoles are kept as the run goes).
func writeFiles(dir string, ops []history.Op, done []Done, r history.Result) error {
	write := func(name string, v any) error {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, name), b, 0o600)
	}
	if err := write("history.json", ops); err != nil {
		return fmt.Errorf("chaos: %w", err)
	}
	if err := write("faults.json", done); err != nil {
		return fmt.Errorf("chaos: %w", err)
	}
	if err := r.WriteHTML(filepath.Join(dir, "history.html")); err != nil {
		return err
	}
	return nil
}
