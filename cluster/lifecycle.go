package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
)

// A Driver powers members' machines and swaps their disks: testvm/local
// runs QEMU, ManualDriver asks the operator.
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
	// ClusterID, when set, is the cluster the images belong to (the
	// output directory's record): a cluster that answers with another ID
	// is refused before anything goes down.
	ClusterID uint64
	// Pending are members of the spec that were never part of the
	// cluster (added to the spec after its first bootstrap, not booted
	// yet): while the member list lacks them, nobody waits for them.
	Pending []string
	// Guard, when set, runs before each member goes down; its error
	// stops the operation there (OperationLock.Held: the lock is still
	// this operation's).
	Guard func(context.Context) error
}

// Attach ties l to the output directory dir whose images it will boot,
// before any is built: members added to c since the first bootstrap of
// the cluster that answers are pending (not waited for until they
// joined); check runs then, so that a refused command changes nothing;
// last, the cluster answering must be the one dir recorded, and l keeps
// its ID. A directory of an older etcdimg, with no record, adopts the
// cluster answering: adopted says so (even when the record could not be
// written), and l.ClusterID is the cluster's.
func (l *Lifecycle) Attach(ctx context.Context, c *spec.Cluster, dir outdir.Layout, check func(context.Context, *Lifecycle) error) (adopted bool, err error) {
	rec, err := render.LoadClusterRecord(dir)
	if err != nil {
		return false, err
	}
	live, liveErr := l.Etcd.LiveClusterID(ctx)
	if liveErr == nil && rec != nil && rec.ID() == live {
		l.Pending = rec.Pending(c.Names())
	}
	if err := check(ctx, l); err != nil {
		return false, err
	}
	if liveErr != nil {
		live, liveErr = l.Etcd.LiveClusterID(ctx) // the check found it answering
	}
	if liveErr != nil {
		return false, liveErr
	}
	l.ClusterID = live
	return render.CheckClusterID(c, dir, live)
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
	// AllowOutage lets a kept-disk replace take the cluster below its
	// quorum (a one- or two-member cluster): writes stop until the
	// member is back. A blank disk is never allowed to: it could not
	// be added to a cluster without a quorum.
	AllowOutage bool
}

// Replace powers member off, swaps its OS disk (and, unless KeepDisk, its
// data disk for a blank one), boots it and waits until it is a started
// voter again, caught up with the leader. Every other member must be
// healthy first; the member itself may be down or gone. If it leads, the
// leadership is moved away before it goes down.
func (l *Lifecycle) Replace(ctx context.Context, member string, o ReplaceOptions) error {
	start := time.Now()
	snap, others, err := l.checkReplace(ctx, member, o)
	if err != nil {
		return err
	}
	var oldID uint64
	if m := snap.ByName(member); m != nil {
		oldID = m.ID
	}
	l.say(fmt.Sprintf("checked: cluster %x, %d of %d members healthy besides %s", snap.ClusterID, len(others), len(others), member), start)
	if l.Guard != nil {
		if err := l.Guard(ctx); err != nil {
			return fmt.Errorf("replace %s: %w", member, err)
		}
	}
	if err := l.moveLeaderFrom(ctx, snap, member); err != nil {
		return fmt.Errorf("replace %s: %w", member, err)
	}
	if err := l.Driver.Swap(ctx, member, o.Image, o.KeepDisk, l.Say); err != nil {
		return fmt.Errorf("replace %s: %w", member, err)
	}
	return l.waitRejoined(ctx, member, snap.ClusterID, oldID, o.KeepDisk)
}

// CheckReplace says why member cannot be replaced now, if it cannot: it
// must be in the spec, the cluster the images belong to, every other
// member healthy, and the rest a quorum while it is down.
func (l *Lifecycle) CheckReplace(ctx context.Context, member string, o ReplaceOptions) error {
	_, _, err := l.checkReplace(ctx, member, o)
	return err
}

func (l *Lifecycle) checkReplace(ctx context.Context, member string, o ReplaceOptions) (*Snapshot, []string, error) {
	if !slices.Contains(l.Members, member) {
		return nil, nil, fmt.Errorf("replace: no member %q in the spec; members: %s", member, strings.Join(l.Members, ", "))
	}
	if err := outageKeepsDisks(o, "replace "+member, "--keep-disk"); err != nil {
		return nil, nil, err
	}
	snap, err := l.Etcd.Observe(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("replace %s: the cluster does not answer: %w", member, err)
	}
	if err := l.checkClusterID(snap); err != nil {
		return nil, nil, fmt.Errorf("replace %s: %w", member, err)
	}
	others := slices.DeleteFunc(slices.Clone(l.Members), func(n string) bool {
		return n == member || (slices.Contains(l.Pending, n) && snap.ByName(n) == nil)
	})
	if bad := snap.Unhealthy(others, l.Members); len(bad) > 0 {
		return nil, nil, fmt.Errorf("replace %s: refused, the rest of the cluster is not healthy: %s", member, strings.Join(bad, "; "))
	}
	if err := quorumWithout(snap, member, o); err != nil {
		return nil, nil, fmt.Errorf("replace %s: refused, %w", member, err)
	}
	return snap, others, nil
}

// outageKeepsDisks refuses --allow-outage without kept disks: a blank
// member cannot join a cluster without a quorum. what names the command,
// keep its flag.
func outageKeepsDisks(o ReplaceOptions, what, keep string) error {
	if o.AllowOutage && !o.KeepDisk {
		return fmt.Errorf("%s: --allow-outage needs %s: a blank member cannot join a cluster without a quorum", what, keep)
	}
	return nil
}

// checkClusterID refuses a cluster other than the one the images
// belong to.
func (l *Lifecycle) checkClusterID(snap *Snapshot) error {
	if l.ClusterID != 0 && snap.ClusterID != l.ClusterID {
		return fmt.Errorf("refused, the members answer as cluster %x but the images belong to cluster %x", snap.ClusterID, l.ClusterID)
	}
	return nil
}

// quorumWithout says why member may not go down, if the voters left
// would not be a quorum of the cluster's voters: a blank member would
// then wait for ever to be added (a membership change needs a quorum),
// and with its disk kept the cluster stops taking writes until it is
// back, which only --allow-outage accepts.
func quorumWithout(snap *Snapshot, member string, o ReplaceOptions) error {
	voters, left := 0, 0
	for _, m := range snap.Members {
		if m.IsLearner {
			continue
		}
		voters++
		if m.Name != member {
			left++
		}
	}
	quorum := voters/2 + 1
	if left >= quorum {
		return nil
	}
	what := fmt.Sprintf("the cluster has %d voter(s); with %s down %d would be left, below its quorum of %d", voters, member, left, quorum)
	switch {
	case !o.KeepDisk:
		return fmt.Errorf("%s: a blank %s could never be added back (a membership change needs a quorum). Add a member first, or keep its data with --keep-disk --allow-outage (writes stop until it is back)", what, member)
	case !o.AllowOutage:
		return fmt.Errorf("%s: writes would stop until %s is back. Add a member first, or accept the outage with --allow-outage", what, member)
	}
	return nil
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
		// A one-member cluster: nobody to hand over to (the quorum
		// check let it go down only with --allow-outage).
		return nil
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
				if keepDisk && oldID != 0 && m.ID != oldID {
					// The kept disk held no data of this member (it was
					// missing or blank): it rejoined as a new member.
					how = fmt.Sprintf("new member ID %x (was %x): the kept data disk held none of its data, so it joined anew", m.ID, oldID)
				}
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
func (l *Lifecycle) Roll(ctx context.Context, images map[string]string, o RollOptions) error {
	snap, err := l.checkRoll(ctx, o)
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
		if err := l.Replace(ctx, n, ReplaceOptions{Image: images[n], KeepDisk: o.KeepDisks, AllowOutage: o.AllowOutage}); err != nil {
			rest := "no member was left untouched"
			if i+1 < len(order) {
				rest = strings.Join(order[i+1:], ", ") + " not touched"
			}
			return fmt.Errorf("roll stopped at %s (%d of %d): %w; %s", n, i+1, len(order), err, rest)
		}
	}
	return nil
}

// RollOptions say how a roll replaces each member (see ReplaceOptions).
type RollOptions struct {
	KeepDisks, AllowOutage bool
	// Verb names the command in refusals: "roll" when empty.
	Verb string
}

// CheckRoll says why a roll cannot start now, if it cannot: every member
// must be running and healthy, no member outside the spec exist, the
// cluster be the one the images belong to, and each member's absence
// leave a quorum.
func (l *Lifecycle) CheckRoll(ctx context.Context, o RollOptions) error {
	_, err := l.checkRoll(ctx, o)
	return err
}

func (l *Lifecycle) checkRoll(ctx context.Context, o RollOptions) (*Snapshot, error) {
	verb := o.Verb
	if verb == "" {
		verb = "roll"
	}
	if err := outageKeepsDisks(ReplaceOptions{KeepDisk: o.KeepDisks, AllowOutage: o.AllowOutage}, verb, "--keep-disks"); err != nil {
		return nil, err
	}
	for _, n := range l.Members {
		up, err := l.Driver.Running(n)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", verb, err)
		}
		if !up {
			return nil, fmt.Errorf("%s: refused, %s is not running; start it (etcdimg start %s) or replace it alone first", verb, n, n)
		}
	}
	snap, err := l.Etcd.Observe(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: refused, the cluster does not answer: %w", verb, err)
	}
	if err := l.checkClusterID(snap); err != nil {
		return nil, fmt.Errorf("%s: %w", verb, err)
	}
	if bad := snap.Unhealthy(l.Members, l.Members); len(bad) > 0 {
		return nil, fmt.Errorf("%s: refused, the cluster is not healthy: %s", verb, strings.Join(bad, "; "))
	}
	// Every member goes down once; all voters count alike.
	if err := quorumWithout(snap, l.Members[0], ReplaceOptions{KeepDisk: o.KeepDisks, AllowOutage: o.AllowOutage}); err != nil {
		return nil, fmt.Errorf("%s: refused, %w", verb, err)
	}
	return snap, nil
}
