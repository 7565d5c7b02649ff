package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// A Driver powers members' machines and swaps their disks. Local runs
// QEMU; Manual asks the operator.
type Driver interface {
	// Running reports whether member's machine is on, or an error when
	// the driver cannot know.
	Running(member string) (bool, error)
	// Swap powers member off, makes it boot from image (with a new blank
	// data disk unless keepDisk), and boots it. say reports each step.
	Swap(ctx context.Context, member, image string, keepDisk bool, say Say) error
}

// Say reports a finished step: what happened and how long it took.
type Say func(step string, took time.Duration)

// Lifecycle replaces members and rolls images through a cluster, one
// member at a time, never taking a second member down while one is not
// back.
type Lifecycle struct {
	Etcd    *Etcd
	Driver  Driver
	Members []string      // the spec's members, in spec order
	Timeout time.Duration // how long a replaced member has to rejoin
	Say     Say
}

func (l *Lifecycle) say(step string, start time.Time) {
	if l.Say != nil {
		l.Say(step, time.Since(start))
	}
}

// ReplaceOptions say how a member is replaced.
type ReplaceOptions struct {
	Image    string // the OS image it boots from
	KeepDisk bool   // keep its data disk (its identity); else a new blank one
}

// Replace powers member off, swaps its OS disk (and, unless KeepDisk, its
// data disk for a blank one), boots it and waits until it is a started
// voter again, caught up with the leader. Every other member must be
// healthy first; the member itself may be down or gone. If it leads, the
// leadership is moved away before it goes down.
func (l *Lifecycle) Replace(ctx context.Context, member string, o ReplaceOptions) error {
	start := time.Now()
	snap, others, err := l.checkReplace(ctx, member)
	if err != nil {
		return err
	}
	var oldID uint64
	if m := snap.ByName(member); m != nil {
		oldID = m.ID
	}
	l.say(fmt.Sprintf("checked: cluster %x, %d of %d members healthy besides %s", snap.ClusterID, len(others), len(others), member), start)
	if err := l.moveLeaderFrom(ctx, snap, member); err != nil {
		return fmt.Errorf("replace %s: %w", member, err)
	}
	if err := l.Driver.Swap(ctx, member, o.Image, o.KeepDisk, l.Say); err != nil {
		return fmt.Errorf("replace %s: %w", member, err)
	}
	return l.waitRejoined(ctx, member, snap.ClusterID, oldID, o.KeepDisk)
}

// CheckReplace says why member cannot be replaced now, if it cannot:
// it must be in the spec and every other member healthy.
func (l *Lifecycle) CheckReplace(ctx context.Context, member string) error {
	_, _, err := l.checkReplace(ctx, member)
	return err
}

func (l *Lifecycle) checkReplace(ctx context.Context, member string) (*Snapshot, []string, error) {
	if !slices.Contains(l.Members, member) {
		return nil, nil, fmt.Errorf("replace: no member %q in the spec; members: %s", member, strings.Join(l.Members, ", "))
	}
	snap, err := l.Etcd.Observe(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("replace %s: the cluster does not answer: %w", member, err)
	}
	others := slices.DeleteFunc(slices.Clone(l.Members), func(n string) bool { return n == member })
	if bad := snap.Unhealthy(others, l.Members); len(bad) > 0 {
		return nil, nil, fmt.Errorf("replace %s: refused, the rest of the cluster is not healthy: %s", member, strings.Join(bad, "; "))
	}
	return snap, others, nil
}

// moveLeaderFrom moves the leadership to the most caught-up other voter
// when member leads.
func (l *Lifecycle) moveLeaderFrom(ctx context.Context, snap *Snapshot, member string) error {
	leader, ok := snap.Leader()
	if !ok || leader.Name != member {
		return nil
	}
	start := time.Now()
	var to *MemberStatus
	for _, n := range l.Members {
		st, ok := snap.Status[n]
		if n == member || !ok || st.IsLearner {
			continue
		}
		if to == nil || st.RaftIndex > to.RaftIndex {
			to = &st
		}
	}
	if to == nil {
		return errors.New("no other voter to take the leadership")
	}
	if err := l.Etcd.MoveLeader(ctx, leader.URL, to.ID); err != nil {
		return fmt.Errorf("move the leadership to %s: %w", to.Name, err)
	}
	l.say(fmt.Sprintf("leadership moved from %s to %s", member, to.Name), start)
	return nil
}

// waitRejoined waits until member is a started, healthy voter of cluster
// clusterID; with a new disk it must also have a new member ID.
func (l *Lifecycle) waitRejoined(ctx context.Context, member string, clusterID, oldID uint64, keepDisk bool) error {
	start := time.Now()
	timeout := l.Timeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	deadline := time.Now().Add(timeout)
	why := "not seen yet"
	learnerSeen := false
	for {
		if snap, err := l.Etcd.Observe(ctx); err != nil {
			why = err.Error()
		} else if snap.ClusterID != clusterID {
			return fmt.Errorf("%s: the cluster ID changed from %x to %x; stop and investigate", member, clusterID, snap.ClusterID)
		} else {
			m := snap.ByName(member)
			for _, x := range snap.Members {
				if x.IsLearner && x.ID != oldID {
					learnerSeen = true
				}
			}
			switch err := snap.Healthy(member); {
			case m != nil && !keepDisk && oldID != 0 && m.ID == oldID:
				why = fmt.Sprintf("%s still has its old member ID %x", member, oldID)
			case err != nil:
				why = err.Error()
			default:
				how := "same member ID"
				if !keepDisk {
					how = fmt.Sprintf("new member ID %x (was %x)", m.ID, oldID)
					if learnerSeen {
						how += ", joined as a learner and promoted"
					}
				}
				l.say(fmt.Sprintf("%s is a voter again and caught up: %s", member, how), start)
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not rejoin within %s: %s", member, timeout, why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Roll replaces every member in turn: followers first in spec order, the
// leader last after its leadership moved away. It starts only when every
// member is running and healthy, and stops at the first member that does
// not rejoin, leaving the rest untouched.
func (l *Lifecycle) Roll(ctx context.Context, images map[string]string, keepDisks bool) error {
	snap, err := l.checkRoll(ctx)
	if err != nil {
		return err
	}
	order := slices.Clone(l.Members)
	if leader, ok := snap.Leader(); ok {
		i := slices.Index(order, leader.Name)
		order = append(slices.Delete(order, i, i+1), leader.Name)
	}
	for i, n := range order {
		if images[n] == "" {
			return fmt.Errorf("roll: no image for %s", n)
		}
		if err := l.Replace(ctx, n, ReplaceOptions{Image: images[n], KeepDisk: keepDisks}); err != nil {
			rest := "no member was left untouched"
			if i+1 < len(order) {
				rest = strings.Join(order[i+1:], ", ") + " not touched"
			}
			return fmt.Errorf("roll stopped at %s (%d of %d): %w; %s", n, i+1, len(order), err, rest)
		}
	}
	return nil
}

// CheckRoll says why a roll cannot start now, if it cannot: every member
// must be running and healthy, and no member outside the spec exist.
func (l *Lifecycle) CheckRoll(ctx context.Context) error {
	_, err := l.checkRoll(ctx)
	return err
}

func (l *Lifecycle) checkRoll(ctx context.Context) (*Snapshot, error) {
	for _, n := range l.Members {
		up, err := l.Driver.Running(n)
		if err != nil {
			return nil, fmt.Errorf("roll: %w", err)
		}
		if !up {
			return nil, fmt.Errorf("roll: refused, %s is not running; start it (etcdimg start %s) or replace it alone first", n, n)
		}
	}
	snap, err := l.Etcd.Observe(ctx)
	if err != nil {
		return nil, fmt.Errorf("roll: refused, the cluster does not answer: %w", err)
	}
	if bad := snap.Unhealthy(l.Members, l.Members); len(bad) > 0 {
		return nil, fmt.Errorf("roll: refused, the cluster is not healthy: %s", strings.Join(bad, "; "))
	}
	return snap, nil
}
