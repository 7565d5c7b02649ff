package join

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"etcdimg/internal/layout"
)

// Plan is how etcd starts: the outcome of Decide.
type Plan struct {
	Env     []string // ETCD_* overrides for etcd.service
	Learner uint64   // our member ID when we joined as a learner
	New     bool     // the member starts the cluster (or restores it)
	Detail  string
	// Release, when set, ends the probe that tells peers this member
	// is starting the new cluster; call it just before etcd starts.
	Release func()
}

// bootstrapOrJoin runs the rule for a member with a blank disk. It returns
// only with a decision, or when ctx ends.
func (s *Self) bootstrapOrJoin(ctx context.Context) (*Plan, error) {
	if len(s.Peers) == 0 {
		if s.JoinOnly {
			return nil, errors.New(s.joinOnlyWhy())
		}
		return &Plan{Detail: "a one-member cluster: new", New: true}, nil
	}
	pr, err := s.serveProbe()
	if err != nil {
		return nil, fmt.Errorf("answer peers on %s:%d: %w", s.IP, layout.PeerPort, err)
	}
	handedOver := false
	defer func() {
		s.closePeerConns()
		if !handedOver {
			pr.stop()
		}
	}()
	// A peer that said it is starting the new cluster saw every member
	// blank, this one included: it stays a starter while it restores and
	// while its etcd loads (its peer port silent), unless it answers
	// otherwise.
	starting := map[string]bool{}
	lastSaid := time.Time{}
	for {
		states := s.observeAll(ctx)
		markStarters(states, starting, s.WantID)
		if why := s.foreignPeers(states); why != "" {
			return nil, errors.New(why)
		}
		switch decide(states) {
		case decideNew:
			if s.JoinOnly {
				if time.Since(lastSaid) > 10*time.Second {
					logf("join: %s", s.joinOnlyWhy())
					lastSaid = time.Now()
				}
				break
			}
			// The probe now says "starting" until etcd is about to
			// take the port.
			pr.set(s, "starting")
			handedOver = true
			// Peers still deciding hear "starting" before the port
			// goes to etcd; those already starting need not.
			var deciding []peer
			for i, st := range states {
				if st.State == "blank" {
					deciding = append(deciding, s.Peers[i])
				}
			}
			release := func() {
				if !s.waitTold(ctx, pr, deciding, 3*time.Second) {
					// A peer that never heard "starting" takes this
					// member's etcd, whose version is undecided until a
					// quorum forms, for one that may hold data, and
					// waits for it to serve (decide). Unless the members
					// known to start make a quorum, that would be for
					// ever: keep telling until they do.
					if need := toTellForQuorum(len(s.Peers), len(deciding)); need > 0 {
						logf("join: starting the new cluster; waiting until %d more of the members still deciding hear so, for a quorum of members known to start it", need)
						s.waitHeard(ctx, pr, deciding, need, 0)
					}
				}
				if next, ok := s.firstAsked(); ok && s.Restore == nil {
					s.waitServing(ctx, next, 10*time.Second)
				}
				s.closePeerConns()
				pr.stop()
			}
			plan := &Plan{Detail: "every member of the spec has a blank disk: bootstrapping a new cluster", New: true, Release: release}
			if s.Restore != nil {
				plan.Detail = "every member of the spec has a blank disk or is restoring: restoring this member from the image's snapshot"
			}
			return plan, nil
		case decideJoin:
			plan, err := s.join(ctx, states)
			if err == nil {
				return plan, nil
			}
			if time.Since(lastSaid) > 10*time.Second {
				logf("join: the cluster exists but cannot take this member yet: %v; retrying", err)
				lastSaid = time.Now()
			}
		default:
			if time.Since(lastSaid) > 10*time.Second {
				var waiting []string
				for _, st := range states {
					if st.State == "blank" {
						continue
					}
					why := st.State
					switch {
					case strings.Contains(st.Detail, "tls:") || strings.Contains(st.Detail, "x509:"):
						why += ", TLS refused: is its certificate from this cluster's CA?"
					case st.State == "unreachable" && st.Detail != "":
						why += ": " + st.Detail
					}
					waiting = append(waiting, fmt.Sprintf("%s (%s)", st.Name, why))
				}
				logf("join: blank data disk; waiting for %s before deciding: a new cluster starts only when every member reports a blank disk", strings.Join(waiting, ", "))
				lastSaid = time.Now()
			}
		}
		// A round already waits up to 2 s for a peer that is not there;
		// between rounds a short pause, so that the last member to come
		// up is seen soon after it answers.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// waitTold waits until each of peers has heard "starting", for at most
// bound, and reports whether all did. A member that starts the new
// cluster hands its peer port to etcd, and a peer that never heard
// "starting" from it cannot tell it from a member that went away: it
// waits until that etcd serves its peers, which took 3.5-5 s of a
// three-member `up`, against the fraction of a second a deciding peer
// takes to ask again.
//
// Meanwhile it asks the peers not yet told. One that answers "starting"
// decided the same at the same time and waits likewise, for this member
// to ask it: it needs no telling, and the asking tells it. Before, two
// members deciding together each waited out the bound for the other, 3 s
// of a three-member `up` (measured: both decided 4 s after the third).
func (s *Self) waitTold(ctx context.Context, pr *probe, peers []peer, bound time.Duration) bool {
	return s.waitHeard(ctx, pr, peers, len(peers), bound)
}

// waitHeard is waitTold until at least need of peers have heard
// "starting"; with no bound (0) it waits as long as ctx lasts.
func (s *Self) waitHeard(ctx context.Context, pr *probe, peers []peer, need int, bound time.Duration) bool {
	if bound > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, bound)
		defer cancel()
	}
	var asked time.Time
	for {
		var left []peer
		for _, p := range peers {
			if !pr.heard(p.Name) {
				left = append(left, p)
			}
		}
		if len(peers)-len(left) >= need {
			return true
		}
		if time.Since(asked) >= 200*time.Millisecond {
			for i, st := range s.observePeers(ctx, left) {
				if st.State == "starting" || st.State == "undecided" {
					pr.markTold(left[i].Name)
				}
			}
			asked = time.Now()
			continue
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// toTellForQuorum is how many of the deciding peers must hear
// "starting" before a member starting the new cluster hands its port to
// etcd, so that the members known to start it (itself, the peers that
// were starting already, and those told) make a quorum of the 1+peers.
func toTellForQuorum(peers, deciding int) int {
	starters := 1 + peers - deciding
	return max(0, (1+peers)/2+1-starters)
}

// firstAsked is, for the member whose peer URL sorts first, the peer
// whose URL sorts next; ok is false for every other member. etcd asks its
// peers in that order whether it was bootstrapped (see serveProbe's
// /members): every other member asks the first one first, and is
// answered at once while its probe is up; the first one asks the next
// one first, and is answered at once once that etcd serves. So the
// first member starts its etcd last, when the next one serves.
func (s *Self) firstAsked() (peer, bool) {
	var next peer
	for _, p := range s.Peers {
		if p.PeerURL < s.PeerURL {
			return peer{}, false
		}
		if next.PeerURL == "" || p.PeerURL < next.PeerURL {
			next = p
		}
	}
	return next, next.PeerURL != ""
}

// waitServing waits, for at most bound, until p's etcd serves its peer
// port. Asking its probe meanwhile tells it this member is starting.
func (s *Self) waitServing(ctx context.Context, p peer, bound time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	for {
		switch s.observe(ctx, p).State {
		case "undecided", "restored", "data", "etcd":
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}
