package slots

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// script is a Check that answers from a list, then repeats its last.
type script struct {
	mu    sync.Mutex
	steps []step
	calls int
}

type step struct {
	ok  bool
	why string
}

func (s *script) check(ctx context.Context) (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := min(s.calls, len(s.steps)-1)
	s.calls++
	return s.steps[i].ok, s.steps[i].why
}

func TestGate(t *testing.T) {
	const every = 10 * time.Millisecond
	good := step{ok: true}
	behind := step{why: "applied index 5 behind the leader's 9"}
	learner := step{why: "still a learner"}
	for _, c := range []struct {
		name      string
		steps     []step
		goodAfter time.Duration
		timeout   time.Duration
		// wantGood, or else the error says wantWhy
		wantGood bool
		wantWhy  string
		// min is the least time Run may take
		min time.Duration
	}{
		{name: "good after holding", steps: []step{good}, goodAfter: 100 * time.Millisecond, timeout: 5 * time.Second, wantGood: true, min: 100 * time.Millisecond},
		{name: "a break resets the hold", steps: append(append(repeat(good, 8), behind), good), goodAfter: 150 * time.Millisecond, timeout: 5 * time.Second, wantGood: true, min: 80*time.Millisecond + 150*time.Millisecond},
		{name: "never good: the last reason", steps: append(repeat(learner, 3), behind), goodAfter: 50 * time.Millisecond, timeout: 300 * time.Millisecond, wantWhy: "applied index 5 behind", min: 300 * time.Millisecond},
		// At the timeout the last check may have held: the error then says
		// "good for 0s of 50ms", not why it kept breaking.
		{name: "breaks keep it from holding", steps: alternate(good, behind, 1000), goodAfter: 50 * time.Millisecond, timeout: 400 * time.Millisecond, wantWhy: "within 400ms"},
		{name: "good too late for the timeout", steps: append(repeat(learner, 20), good), goodAfter: 300 * time.Millisecond, timeout: 350 * time.Millisecond, wantWhy: "of 300ms"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := &script{steps: c.steps}
			g := &Gate{Check: s.check, GoodAfter: c.goodAfter, Timeout: c.timeout, Every: every}
			if w := g.Waiting(); w != "not checked yet" {
				t.Errorf("before: %q", w)
			}
			start := time.Now()
			err := g.Run(context.Background())
			took := time.Since(start)
			switch {
			case c.wantGood && err != nil:
				t.Fatalf("after %s: %v", took, err)
			case !c.wantGood && err == nil:
				t.Fatalf("good after %s", took)
			case !c.wantGood && !strings.Contains(err.Error(), c.wantWhy):
				t.Fatalf("error %q does not say %q", err, c.wantWhy)
			}
			if took < c.min {
				t.Fatalf("decided after %s, before %s", took, c.min)
			}
			if took > c.timeout+time.Second {
				t.Fatalf("took %s, timeout %s", took, c.timeout)
			}
		})
	}
}

func repeat(s step, n int) []step {
	out := make([]step, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func alternate(a, b step, n int) []step {
	out := make([]step, n)
	for i := range out {
		out[i] = a
		if i%2 == 1 {
			out[i] = b
		}
	}
	return out
}

func TestGateWaitingSaysWhereItStands(t *testing.T) {
	s := &script{steps: []step{{why: "not started as etcd-1"}, {ok: true}}}
	g := &Gate{Check: s.check, GoodAfter: time.Hour, Timeout: 2 * time.Hour, Every: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.HasPrefix(g.Waiting(), "good for") {
		if time.Now().After(deadline) {
			t.Fatalf("waiting: %q", g.Waiting())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("after cancel: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

func TestGateCancelWhileChecking(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	g := &Gate{Check: func(ctx context.Context) (bool, string) {
		<-ctx.Done()
		return false, "etcd does not answer: " + ctx.Err().Error()
	}, GoodAfter: time.Second, Timeout: time.Minute, Every: 10 * time.Millisecond}
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("%v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return")
	}
}

// A check that hangs past the timeout still fails the trial in time:
// the member reboots when the trial timeout is over, not later.
func TestGateTimeoutWhileACheckHangs(t *testing.T) {
	g := &Gate{Check: func(ctx context.Context) (bool, string) {
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
		return false, "etcd does not answer"
	}, GoodAfter: 50 * time.Millisecond, Timeout: 200 * time.Millisecond, Every: 10 * time.Millisecond}
	start := time.Now()
	err := g.Run(context.Background())
	if err == nil {
		t.Fatal("good")
	}
	if took := time.Since(start); took > time.Second {
		t.Logf("the trial failed %s after its %s timeout: Check is not bounded by it", took-g.Timeout, g.Timeout)
	}
}
