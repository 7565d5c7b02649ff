package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdimg/cluster/health"
	"etcdimg/internal/maintain"
)

// Etcd reaches the members' client ports with one client certificate.
type Etcd struct {
	Endpoints []health.Endpoint // one per member of the spec, in spec order
	TLS       *tls.Config
}

// URLs are the endpoints' client URLs, in spec order.
func (e *Etcd) URLs() []string {
	var urls []string
	for _, ep := range e.Endpoints {
		urls = append(urls, ep.URL)
	}
	return urls
}

// Client opens an etcd client on the given URLs (every endpoint when
// none is given). The caller closes it.
func (e *Etcd) Client(urls ...string) (*clientv3.Client, error) {
	if len(urls) == 0 {
		urls = e.URLs()
	}
	return clientv3.New(clientv3.Config{
		Endpoints: urls, TLS: e.TLS, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialKeepAliveTime: 5 * time.Second, DialKeepAliveTimeout: 5 * time.Second,
	})
}

// MemberStatus is what one member says of itself.
type MemberStatus struct {
	Name      string
	URL       string
	ID        uint64
	ClusterID uint64
	Leader    uint64
	RaftTerm  uint64
	RaftIndex uint64
	Applied   uint64
	IsLearner bool
	// StorageVersion is the version (major.minor.patch) of its data's
	// format, which follows the cluster's version.
	StorageVersion string
	// Downgrade is the target of etcd's downgrade when the cluster has
	// one enabled, as the member applied it, else "".
	Downgrade string
	// DBSize is the size of its database file (what the quota counts),
	// DBSizeInUse the part of it that holds data, DBQuota its backend
	// quota (members lower theirs to fit small data disks), in bytes.
	DBSize, DBSizeInUse, DBQuota int64
	Err                          error
}

// DB is s as maintain's rules read it.
func (s MemberStatus) DB() maintain.Member {
	return maintain.Member{Name: s.Name, ID: s.ID, Leader: s.ID != 0 && s.Leader == s.ID, Learner: s.IsLearner, Applied: s.Applied,
		DBSize: s.DBSize, InUse: s.DBSizeInUse, Quota: s.DBQuota, Err: s.Err}
}

// Statuses asks every endpoint for its status, in parallel, each within
// timeout. Results keep the endpoints' order.
func (e *Etcd) Statuses(ctx context.Context, timeout time.Duration) []MemberStatus {
	out := make([]MemberStatus, len(e.Endpoints))
	var wg sync.WaitGroup
	for i, ep := range e.Endpoints {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = e.status(ctx, ep, timeout)
		}()
	}
	wg.Wait()
	return out
}

func (e *Etcd) status(ctx context.Context, ep health.Endpoint, timeout time.Duration) MemberStatus {
	s := MemberStatus{Name: ep.Member, URL: ep.URL}
	cli, err := e.Client(ep.URL)
	if err != nil {
		s.Err = err
		return s
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r, err := cli.Status(cctx, ep.URL)
	if err != nil {
		s.Err = err
		return s
	}
	s.ID, s.ClusterID, s.Leader = r.Header.MemberId, r.Header.ClusterId, r.Leader
	s.RaftTerm, s.RaftIndex, s.Applied, s.IsLearner = r.RaftTerm, r.RaftIndex, r.RaftAppliedIndex, r.IsLearner
	s.StorageVersion = r.StorageVersion
	s.DBSize, s.DBSizeInUse, s.DBQuota = r.DbSize, r.DbSizeInUse, r.DbSizeQuota
	if d := r.DowngradeInfo; d != nil && d.Enabled {
		s.Downgrade = d.TargetVersion
	}
	return s
}

// MemberList returns the cluster's members (a linearizable read: it
// needs a quorum).
func (e *Etcd) MemberList(ctx context.Context) (*clientv3.MemberListResponse, error) {
	cli, err := e.Client()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return cli.MemberList(cctx)
}

// MoveLeader hands leadership from the current leader to the member
// with ID to. It must be sent to the leader itself.
func (e *Etcd) MoveLeader(ctx context.Context, leaderURL string, to uint64) error {
	cli, err := e.Client(leaderURL)
	if err != nil {
		return err
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = cli.MoveLeader(cctx, to)
	return err
}

// MemberRemove removes the member with ID id.
func (e *Etcd) MemberRemove(ctx context.Context, id uint64) error {
	cli, err := e.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = cli.MemberRemove(cctx, id)
	return err
}

// Snapshot of the cluster as the lifecycle needs it: who is a started
// voter, who leads, and each member's raft index.
type Snapshot struct {
	ClusterID uint64
	Members   []*etcdserverpb.Member
	Status    map[string]MemberStatus // by name, only the members that answered
	LeaderID  uint64
}

// ByName returns the listed member called name.
func (s *Snapshot) ByName(name string) *etcdserverpb.Member {
	for _, m := range s.Members {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// Leader returns the leader's status, if it answered.
func (s *Snapshot) Leader() (MemberStatus, bool) {
	for _, st := range s.Status {
		if st.ID == s.LeaderID && s.LeaderID != 0 {
			return st, true
		}
	}
	return MemberStatus{}, false
}

// Observe takes a Snapshot: the member list and every member's status.
func (e *Etcd) Observe(ctx context.Context) (*Snapshot, error) {
	list, err := e.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("member list: %w", err)
	}
	s := &Snapshot{ClusterID: list.Header.ClusterId, Members: list.Members, Status: map[string]MemberStatus{}}
	for _, st := range e.Statuses(ctx, 5*time.Second) {
		if st.Err != nil {
			continue
		}
		s.Status[st.Name] = st
		if st.Leader != 0 && s.LeaderID == 0 {
			s.LeaderID = st.Leader
		}
	}
	return s, nil
}

// maxLag is how many raft entries a member may trail the leader by and
// still count as caught up.
const maxLag = 50

// Healthy says whether the member called name is a started voter that
// answers, sees the cluster's leader and is within maxLag of it; nil
// when it is.
func (s *Snapshot) Healthy(name string) error {
	m := s.ByName(name)
	if m == nil {
		return fmt.Errorf("%s is not a started member", name)
	}
	if m.IsLearner {
		return fmt.Errorf("%s is still a learner", name)
	}
	st, ok := s.Status[name]
	if !ok {
		return fmt.Errorf("%s does not answer", name)
	}
	if st.ClusterID != s.ClusterID {
		return fmt.Errorf("%s is in cluster %x, not %x", name, st.ClusterID, s.ClusterID)
	}
	if st.Leader == 0 {
		return fmt.Errorf("%s has no leader", name)
	}
	leader, ok := s.Leader()
	if !ok {
		return errors.New("the leader does not answer")
	}
	if leader.RaftIndex > st.RaftIndex+maxLag {
		return fmt.Errorf("%s is %d entries behind the leader", name, leader.RaftIndex-st.RaftIndex)
	}
	// Committed is not applied: a member that restarted with a backlog
	// has the entries but does not serve them yet.
	if leader.RaftIndex > st.Applied+maxLag {
		return fmt.Errorf("%s has applied %d entries fewer than the leader committed", name, leader.RaftIndex-st.Applied)
	}
	return nil
}

// Unhealthy lists, one reason each, the members of check that are not
// healthy, and any member that is not in spec at all.
func (s *Snapshot) Unhealthy(check, spec []string) []string {
	var bad []string
	for _, n := range check {
		if err := s.Healthy(n); err != nil {
			bad = append(bad, err.Error())
		}
	}
	if extra := s.strangers(spec); len(extra) > 0 {
		bad = append(bad, "members not in the spec: "+strings.Join(extra, ", "))
	}
	return bad
}

// strangers lists members that are not named in the spec (say, a
// learner left behind): a roll refuses to start while any exists.
func (s *Snapshot) strangers(names []string) []string {
	var out []string
	for _, m := range s.Members {
		if !slices.Contains(names, m.Name) {
			out = append(out, fmt.Sprintf("%x (%q, %v)", m.ID, m.Name, m.PeerURLs))
		}
	}
	return out
}
