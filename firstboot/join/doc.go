// Package join decides how this member's etcd starts, with nothing from
// outside the cluster, and then helps it along: bootstrap a new cluster,
// join the running one, or restart from the data on the disk; restore
// the image's snapshot into a new cluster; promote a learner; record the
// cluster ID on the data disk; turn auth on.
//
// Bootstrap or join, decided here:
//
//   - a member whose data disk holds etcd data starts etcd from it;
//   - a member with a blank disk asks every peer of the spec, over mTLS
//     with its own certificate, whether it holds data: a peer running etcd
//     answers on its client port; a peer that is itself blank and deciding
//     answers on its peer port (etcd is not there yet) with "blank";
//   - only when every peer says blank does it bootstrap a new cluster (the
//     spec's first boot): all of them then start `new` with the same
//     initial cluster, which is consistent. A peer whose etcd has not
//     decided its cluster's version counts with them only if it said, in
//     this member's hearing, that it was starting the new cluster: a
//     member restarting from a WAL written right after the first
//     bootstrap answers exactly as one bootstrapping does;
//   - when etcd answers anywhere, the cluster exists: the member removes
//     its stale entry (its old self, forgotten vote and log), adds itself
//     as a learner, starts `existing`, and promotes itself once caught up;
//   - otherwise it waits and says whom for. It never starts `new` while
//     any peer may hold data.
//
// By concern: self.go reads the member from etcd.conf; observe.go asks a
// peer what it holds; probe.go is a deciding member's answer on its peer
// port; decide.go is the rule over the answers; bootstrap.go the loop
// that applies it and hands the port to etcd; join.go the change of
// membership; restore.go, promote.go, clusterid.go and auth.go the rest.
//
// It does not find, format or mount the data disk (package datadisk
// does; join only records the cluster ID in its marker), and it does not
// start etcd: PID 1 does, with the Plan's environment.
package join
