package join

import (
	"context"
	"fmt"
	"time"

	"etcdimg/firstboot/internal/console"
	"etcdimg/ignition/ign"
)

// Decide says how etcd starts: from the data on the disk (hasData), or,
// for a blank disk, by the rule (bootstrapOrJoin), restoring the image's
// snapshot first when the member starts a new cluster from one. It
// returns only with a decision, or when ctx ends; the probe that told
// peers this member is starting has ended by then.
func (s *Self) Decide(ctx context.Context, hasData bool) (*Plan, error) {
	if hasData {
		return s.restartPlan(ctx), nil
	}
	plan, err := s.bootstrapOrJoin(ctx)
	if err != nil {
		return nil, err
	}
	if plan.New && s.Restore != nil {
		what, err := s.restoreFromImage()
		if err != nil {
			if plan.Release != nil {
				plan.Release()
			}
			return nil, err
		}
		plan.Detail += "; " + what
	}
	if plan.Release != nil {
		plan.Release()
	}
	return plan, nil
}

// peersServingWait bounds how long a member restarting from its data
// asks its peers whether they serve: a peer that is off costs one
// timeout, and a cluster restarting as a whole waits for nobody.
const peersServingWait = 8 * time.Second

// restartPlan is the plan of a member restarting from its data. When a
// quorum of the cluster serves without it, etcd's initial corruption
// check is turned on: etcd compares this member's data with every peer's
// at its revision before serving anything, and refuses to start on a
// difference (the console says so, and `replace` heals it). Otherwise
// (a cluster restarting as a whole, peers down) the check stays off: a
// damaged member that started first would make etcd refuse every healthy
// peer after it. The leader's compaction hash check names such a member
// once a quorum serves.
func (s *Self) restartPlan(ctx context.Context) *Plan {
	plan := &Plan{Detail: "this member's etcd data is on the disk: etcd restarts from it"}
	if len(s.Peers) == 0 {
		return plan
	}
	octx, cancel := context.WithTimeout(ctx, peersServingWait)
	states := s.observeAll(octx)
	cancel()
	serving := 0
	for _, st := range states {
		if st.State == "etcd" {
			serving++
		}
	}
	check, why := initialCheck(serving, len(s.Peers)+1)
	plan.Env = []string{ign.FeatureGatesVar + "=" + ign.FeatureGates(check)}
	plan.Detail += "; " + why
	return plan
}

// initialCheck says whether etcd's initial corruption check is to run
// when serving of a cluster of size members' other members serve, and
// why, in words.
func initialCheck(serving, size int) (bool, string) {
	quorum := size/2 + 1
	if serving >= quorum {
		return true, fmt.Sprintf("%d of its %d peers serve: etcd compares its data with theirs before serving", serving, size-1)
	}
	return false, fmt.Sprintf("%d of its %d peers serve, below a quorum of %d: no initial corruption check (the leader compares the members' hashes at each compaction)", serving, size-1, quorum)
}

// AfterStart runs, beside the etcd that started under plan, what needs
// it up, each in a goroutine of its own until done or ctx ends: the
// learner's promotion, the cluster ID's record in the disk's marker, and
// auth. For a member that restarted from a disk whose marker records
// cluster recordedID, it also checks that its peers run that cluster,
// and calls stop with the reason if they do not.
func (s *Self) AfterStart(ctx context.Context, plan *Plan, recordedID string, stop func(why string)) {
	if plan.Learner != 0 {
		// It ends once promoted, or at power-off.
		console.Go("promote", func() { _ = s.promote(ctx, plan.Learner) })
	}
	console.Go("record cluster ID", func() { s.recordClusterID(ctx) })
	console.Go("auth", func() { s.ensureAuth(ctx) })
	if recordedID != "" {
		// Checked beside etcd's start, not before it, so that a
		// cluster's restart does not wait on peers that are down:
		// etcd on data of another cluster cannot reach a quorum
		// (its peers refuse it), so it serves nothing meanwhile.
		console.Go("check cluster ID", func() {
			if why := s.watchClusterID(ctx, recordedID); why != "" {
				stop(why)
			}
		})
	}
}

// logf prints one line to the console.
func logf(format string, args ...any) { console.Logf(format, args...) }
