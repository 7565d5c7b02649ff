package join

import (
	"context"
	"fmt"
	"time"
)

// CaughtUpVoter reports whether this member is a started voter that has
// applied everything the leader had committed a moment before: what a
// slot on trial must be, and stay, to be marked good. If not, it says
// why.
func (s *Self) CaughtUpVoter(ctx context.Context) (bool, string) {
	cli, err := s.client(3*time.Second, s.localURL())
	if err != nil {
		return false, fmt.Sprintf("etcd does not answer: %v", err)
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	list, err := cli.MemberList(cctx)
	if err != nil {
		return false, fmt.Sprintf("etcd does not answer: %v", err)
	}
	started, voter, leaderURL := false, false, ""
	local, err := cli.Status(cctx, s.localURL())
	if err != nil {
		return false, fmt.Sprintf("etcd status: %v", err)
	}
	for _, m := range list.Members {
		if m.ID == local.Header.MemberId {
			started, voter = m.Name == s.Name, !m.IsLearner
		}
		if m.ID == local.Leader && len(m.ClientURLs) > 0 {
			leaderURL = m.ClientURLs[0]
		}
	}
	switch {
	case !started:
		return false, "not started as " + s.Name
	case !voter:
		return false, "still a learner"
	case local.Leader == 0 || leaderURL == "":
		return false, "no leader"
	case len(local.Errors) > 0:
		return false, fmt.Sprintf("etcd reports %v", local.Errors)
	}
	if local.Leader == local.Header.MemberId {
		return true, ""
	}
	lc, err := s.client(3*time.Second, leaderURL)
	if err != nil {
		return false, fmt.Sprintf("the leader does not answer: %v", err)
	}
	defer lc.Close()
	lead, err := lc.Status(cctx, leaderURL)
	if err != nil {
		return false, fmt.Sprintf("the leader's status: %v", err)
	}
	// Read this member's applied index after the leader's commit index:
	// caught up means it has applied what the leader had committed.
	after, err := cli.Status(cctx, s.localURL())
	if err != nil {
		return false, fmt.Sprintf("etcd status: %v", err)
	}
	if after.RaftAppliedIndex < lead.RaftIndex {
		return false, fmt.Sprintf("applied index %d behind the leader's %d", after.RaftAppliedIndex, lead.RaftIndex)
	}
	return true, ""
}
