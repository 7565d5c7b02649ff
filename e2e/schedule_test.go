package e2e

import (
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"
)

// The e2e tests share two cores. Most run one after another; the long
// ones that each boot a cluster of their own (the ranks below) run two at
// a time once the others are done, longest first, so that the two slots
// end close together. Three clusters at once are too many: booting nine
// members at once took over four minutes (measured), past `up`'s bound.
// The chaos test stays serial: its bounds on healing (a member healthy
// within three minutes of a partition's end) are what it checks, and a
// cluster beside it slows every member. The subtests that each boot one
// VM (the cloud cases, the refused boots) run two at a time too. TestMain
// raises -parallel so that these pools, not the order in which Go wakes
// parallel tests, decide what runs.
const (
	rankLifecycle = iota
	rankUpgrade
	rankBackups
	rankRestore
)

var (
	longTests = newPool(2)
	vmCases   = newPool(2)
)

// longTest makes t one of the long tests of the parallel phase and waits
// for its turn.
func longTest(t *testing.T, rank int) {
	t.Helper()
	t.Parallel()
	longTests.take(t, rank)
}

// vmCase makes the subtest t parallel and waits until fewer than two
// such subtests run.
func vmCase(t *testing.T) {
	t.Helper()
	t.Parallel()
	vmCases.take(t, 0)
}

// pool hands out n slots to waiters in rank order. The first waiter
// starts a short gathering time, so that the tests Go wakes together
// are all waiting before the first slot is given.
type pool struct {
	mu       sync.Mutex
	free     int
	waiting  []poolWaiter
	gathered bool
	timer    *time.Timer
}

type poolWaiter struct {
	rank  int
	seq   int
	ready chan struct{}
}

func newPool(n int) *pool { return &pool{free: n} }

func (p *pool) take(t *testing.T, rank int) {
	t.Helper()
	ready := make(chan struct{})
	p.mu.Lock()
	p.waiting = append(p.waiting, poolWaiter{rank: rank, seq: len(p.waiting), ready: ready})
	if !p.gathered && p.timer == nil {
		p.timer = time.AfterFunc(time.Second, func() {
			p.mu.Lock()
			p.gathered = true
			p.dispatch()
			p.mu.Unlock()
		})
	} else if p.gathered {
		p.dispatch()
	}
	p.mu.Unlock()
	<-ready
	t.Cleanup(func() {
		p.mu.Lock()
		p.free++
		p.dispatch()
		p.mu.Unlock()
	})
}

// dispatch gives the free slots to the best-ranked waiters; p.mu is held.
func (p *pool) dispatch() {
	sort.SliceStable(p.waiting, func(i, j int) bool { return p.waiting[i].rank < p.waiting[j].rank })
	for p.free > 0 && len(p.waiting) > 0 {
		close(p.waiting[0].ready)
		p.waiting = p.waiting[1:]
		p.free--
	}
}

func TestPoolGivesSlotsByRank(t *testing.T) {
	p := newPool(1)
	var mu sync.Mutex
	var order []int
	t.Run("waiters", func(t *testing.T) {
		for _, rank := range []int{3, 1, 2, 0} {
			t.Run(fmt.Sprint(rank), func(t *testing.T) {
				t.Parallel()
				p.take(t, rank)
				mu.Lock()
				order = append(order, rank)
				mu.Unlock()
			})
		}
	})
	if fmt.Sprint(order) != "[0 1 2 3]" {
		t.Errorf("slots given in the order %v, want [0 1 2 3]", order)
	}
}
