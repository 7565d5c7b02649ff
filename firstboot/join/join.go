package join

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// join makes room for this member in the running cluster: it removes its
// stale entry, adds itself as a learner (or finds itself already added),
// and returns the environment etcd starts `existing` with. The probe
// server stays up until then; etcd takes the peer port after.
func (s *Self) join(ctx context.Context, states []peerState) (*Plan, error) {
	var eps []string
	for i, st := range states {
		if st.State == "etcd" {
			eps = append(eps, s.Peers[i].ClientURL)
		}
	}
	cli, err := s.client(3*time.Second, eps...)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	list, err := cli.MemberList(cctx)
	if err != nil {
		return nil, fmt.Errorf("member list: %w", err)
	}
	var mine *memberEntry
	for _, m := range list.Members {
		if slices.Contains(m.PeerURLs, s.PeerURL) {
			mine = &memberEntry{ID: m.ID, Name: m.Name, Started: len(m.ClientURLs) > 0, Learner: m.IsLearner}
		}
	}
	detail := ""
	if mine != nil && mine.Started {
		if _, err := cli.MemberRemove(cctx, mine.ID); err != nil && !errors.Is(err, rpctypes.ErrMemberNotFound) {
			return nil, fmt.Errorf("remove the stale member %x: %w", mine.ID, err)
		}
		logf("join: removed this member's stale entry %x (%s): its data is gone", mine.ID, mine.Name)
		detail = fmt.Sprintf("stale member %x removed; ", mine.ID)
		mine = nil
	}
	members := list.Members
	if mine == nil {
		resp, err := cli.MemberAddAsLearner(cctx, []string{s.PeerURL})
		if err != nil {
			return nil, fmt.Errorf("add this member as a learner: %w", err)
		}
		mine = &memberEntry{ID: resp.Member.ID, Learner: true}
		members = resp.Members
		detail += fmt.Sprintf("added as learner %x", mine.ID)
	} else {
		detail += fmt.Sprintf("already added as %x (learner %v)", mine.ID, mine.Learner)
	}
	byURL := map[string]string{s.PeerURL: s.Name}
	for _, p := range s.Peers {
		byURL[p.PeerURL] = p.Name
	}
	var initial []string
	for _, m := range members {
		for _, u := range m.PeerURLs {
			name := m.Name
			if m.ID == mine.ID || name == "" {
				name = byURL[u]
			}
			if name == "" {
				name = fmt.Sprintf("member-%x", m.ID)
			}
			initial = append(initial, name+"="+u)
		}
	}
	sort.Strings(initial)
	plan := &Plan{
		Env:    []string{"ETCD_INITIAL_CLUSTER_STATE=existing", "ETCD_INITIAL_CLUSTER=" + strings.Join(initial, ",")},
		Detail: fmt.Sprintf("cluster %x exists: %s", list.Header.ClusterId, detail),
	}
	if mine.Learner {
		plan.Learner = mine.ID
	}
	return plan, nil
}

type memberEntry struct {
	ID      uint64
	Name    string
	Started bool
	Learner bool
}
