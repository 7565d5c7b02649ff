package join

import (
	"fmt"
)

// Decisions of decide.
const (
	decideNew  = "new"
	decideJoin = "join"
	decideWait = "wait"
)

// decide is the rule, over what each peer said (after markStarters):
// join when etcd answers anywhere; new only when every peer holds no
// data of a cluster that existed before; else wait. A peer holds no such
// data when it is
//
//   - "blank": its probe says its disk has no WAL and it is deciding;
//   - "starting": it said so to this member, having seen every member
//     blank; whatever WAL it has since is the new cluster's own;
//   - "restored": it restored the image's snapshot into this very
//     cluster, which never served.
//
// Every other peer may hold data, and "undecided" is the one to mind:
// etcd with a WAL whose cluster has not decided its version. It is as
// likely a member restarting from data written just after the first
// bootstrap as one starting a new cluster, and starting `new` beside it
// with an empty log could overwrite its log. Unless it was heard
// starting, it holds data: wait.
func decide(states []peerState) string {
	blank := 0
	for _, st := range states {
		switch st.State {
		case "etcd":
			return decideJoin
		case "blank", "starting", "restored":
			blank++
		case "undecided", "data", "unreachable":
			// may hold data: wait
		}
	}
	if blank == len(states) {
		return decideNew
	}
	return decideWait
}

// markStarters remembers the peers that said they are starting the new
// cluster, and keeps them starters while their peer port is silent or
// their etcd runs without a decided version (the new cluster, waiting
// for a quorum) or loads its data (of this cluster) without serving yet.
// A peer never heard starting gets no such credit: an undecided etcd
// may be restarting from its data (see decide).
func markStarters(states []peerState, starting map[string]bool, want uint64) {
	for i, st := range states {
		switch {
		case st.State == "starting":
			starting[st.Name] = true
		case st.State == "blank":
			delete(starting, st.Name) // it rebooted before starting
		case starting[st.Name] && (st.State == "unreachable" || st.State == "undecided" || (st.State == "data" && (st.ClusterID == 0 || st.ClusterID == want))):
			states[i].State = "starting"
		}
	}
}

// joinOnlyWhy says why a member whose image names a cluster formed with
// another membership does not bootstrap, though no peer holds data.
func (s *Self) joinOnlyWhy() string {
	return fmt.Sprintf("blank data disk and no member of the spec runs etcd, but this image belongs to cluster %x, formed with another membership than the spec's %s: it only joins that cluster and never bootstraps a new one. If that cluster's data is lost, rebuild it with `etcdimg restore` from a backup", s.WantID, s.InitialCluster)
}

// foreignPeers says why this member must not join, if a peer of the
// spec runs a cluster other than the one this image belongs to: an image
// of a cluster that was since rebuilt (restored with a new token, say)
// never joins the new one, even with a blank disk and the same CA.
func (s *Self) foreignPeers(states []peerState) string {
	for _, st := range states {
		if st.ClusterID != 0 && st.ClusterID != s.WantID {
			return fmt.Sprintf("%s runs cluster %x, but this image belongs to cluster %x (token %s): refusing to join another cluster; boot this member from an image of the running cluster (`etcdimg build` in its directory)", st.Name, st.ClusterID, s.WantID, s.Cluster)
		}
	}
	return ""
}
