package join

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// promote makes learner id a voter once etcd accepts it (it refuses
// until the learner has caught up with the leader), retrying until it is
// done or ctx ends. It asks the leader itself: a follower forwards a
// promotion to the leader without the caller's identity, which the
// leader refuses under auth ("auth: user name is empty", etcd issue
// 20757; the fix there carries a password token, not a certificate's
// name), and the follower retries that until its request timeout, 7 s
// or more per round that lands on it.
func (s *Self) promote(ctx context.Context, id uint64) error {
	var eps []string
	for _, p := range s.Peers {
		eps = append(eps, p.ClientURL)
	}
	eps = append(eps, s.localURL())
	start := time.Now()
	lastSaid := time.Now()
	for {
		err := s.promoteAtLeader(ctx, id, eps)
		if err == nil || errors.Is(err, rpctypes.ErrMemberNotLearner) {
			logf("join: promoted %x from learner to voter after %s", id, time.Since(start).Round(time.Millisecond))
			return nil
		}
		if time.Since(lastSaid) > 15*time.Second {
			logf("join: learner %x not promoted yet: %v; retrying", id, err)
			lastSaid = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("join: learner %x not promoted: %w (last: %v)", id, ctx.Err(), err)
		case <-time.After(time.Second):
		}
	}
}

// promoteAtLeader asks the member that leads, found through eps, to
// promote learner id.
func (s *Self) promoteAtLeader(ctx context.Context, id uint64, eps []string) error {
	cli, err := s.client(3*time.Second, eps...)
	if err != nil {
		return err
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var leader uint64
	for _, ep := range eps {
		if st, err := cli.Status(cctx, ep); err == nil && st.Leader != 0 {
			leader = st.Leader
			break
		}
	}
	if leader == 0 {
		return errors.New("no member knows a leader")
	}
	list, err := cli.MemberList(cctx)
	if err != nil {
		return err
	}
	var urls []string
	for _, m := range list.Members {
		if m.ID == leader {
			urls = m.ClientURLs
		}
	}
	if len(urls) == 0 {
		return fmt.Errorf("the leader %x has no client URL in the member list", leader)
	}
	lc, err := s.client(3*time.Second, urls...)
	if err != nil {
		return err
	}
	defer lc.Close()
	_, err = lc.MemberPromote(cctx, id)
	return err
}
