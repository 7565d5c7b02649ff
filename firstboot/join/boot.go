package join

import (
	"context"

	"etcdimg/firstboot/internal/console"
)

// Decide says how etcd starts: from the data on the disk (hasData), or,
// for a blank disk, by the rule (bootstrapOrJoin), restoring the image's
// snapshot first when the member starts a new cluster from one. It
// returns only with a decision, or when ctx ends; the probe that told
// peers this member is starting has ended by then.
func (s *Self) Decide(ctx context.Context, hasData bool) (*Plan, error) {
	if hasData {
		return &Plan{Detail: "this member's etcd data is on the disk: etcd restarts from it"}, nil
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
