package slots

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"etcdimg/internal/layout"
)

// SlotFromCmdline is the slot the kernel command line names
// (layout.SlotArg), or "".
func SlotFromCmdline(cmdline string) string {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, layout.SlotArg+"="); ok {
			return v
		}
	}
	return ""
}

// Gate decides a trial boot: the slot is good once check has held for
// goodAfter without a break, and failed if that has not happened within
// timeout. check says whether the member is good now, and if not, why.
type Gate struct {
	Check     func(ctx context.Context) (bool, string)
	GoodAfter time.Duration
	Timeout   time.Duration
	Every     time.Duration

	mu      sync.Mutex
	since   time.Time // when check last started to hold
	last    string    // the last reason it did not
	started time.Time
}

// Run runs the gate until it decides or ctx ends: nil when the slot is
// good, the reason when it failed.
func (g *Gate) Run(ctx context.Context) error {
	every := g.Every
	if every == 0 {
		every = 2 * time.Second
	}
	g.mu.Lock()
	g.started = time.Now()
	g.mu.Unlock()
	deadline := time.NewTimer(g.Timeout)
	defer deadline.Stop()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		ok, why := g.Check(ctx)
		now := time.Now()
		g.mu.Lock()
		switch {
		case !ok:
			g.since, g.last = time.Time{}, why
		case g.since.IsZero():
			g.since = now
		}
		held := !g.since.IsZero() && now.Sub(g.since) >= g.GoodAfter
		g.mu.Unlock()
		if held {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			g.mu.Lock()
			last := g.last
			g.mu.Unlock()
			why := g.Waiting()
			if last != "" && !strings.Contains(why, last) {
				why += "; before that: " + last
			}
			return fmt.Errorf("not a started, caught-up voter for %s within %s: %s", g.GoodAfter, g.Timeout, why)
		case <-tick.C:
		}
	}
}

// Waiting says where the gate stands.
func (g *Gate) Waiting() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.since.IsZero() {
		return fmt.Sprintf("good for %s of %s", time.Since(g.since).Round(time.Second), g.GoodAfter)
	}
	if g.last == "" {
		return "not checked yet"
	}
	return g.last
}
