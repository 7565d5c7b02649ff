package join

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"etcdimg/ignition"
	"etcdimg/ignition/ign"
	"etcdimg/internal/layout"
	"etcdimg/internal/snapshot"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// writeConf writes member m's etcd.conf (as render writes it, with the
// recorded cluster ID clusterID, 0 for none) and the cluster's PKI under
// a new root, with the certificate paths pointing into it.
func writeConf(t *testing.T, c *spec.Cluster, m spec.Member, clusterID uint64) string {
	t.Helper()
	var ips []string
	for _, x := range c.Members {
		ips = append(ips, x.IP)
	}
	root := writePKI(t, ips...)
	conf := string(ignition.EtcdConf(c, m, c.Name, clusterID))
	for _, k := range []string{"ETCD_PEER_CERT_FILE", "ETCD_CERT_FILE"} {
		conf = strings.Replace(conf, k+`="`+ign.CertPath+`"`, k+`="/`+pki.MemberCertFile(m.Name)+`"`, 1)
	}
	for _, k := range []string{"ETCD_PEER_KEY_FILE", "ETCD_KEY_FILE"} {
		conf = strings.Replace(conf, k+`="`+ign.KeyPath+`"`, k+`="/`+pki.MemberKeyFile(m.Name)+`"`, 1)
	}
	for _, k := range []string{"ETCD_PEER_TRUSTED_CA_FILE", "ETCD_TRUSTED_CA_FILE"} {
		conf = strings.Replace(conf, k+`="`+ign.CACertPath+`"`, k+`="/`+pki.CACertFile+`"`, 1)
	}
	p := filepath.Join(root, ign.EtcdConfPath)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// TestTheRecordedClusterIDWins: after the spec grew from three members
// to four, a blank member's image expects the running cluster's ID (the
// one of its first bootstrap, recorded in the output directory), not the
// one the grown spec's initial cluster would give: the old rule made a
// blank `replace` refuse to rejoin ("refusing to join another cluster").
// Such an image never bootstraps a cluster of its own.
func TestTheRecordedClusterIDWins(t *testing.T) {
	three, four := spec.Default(3), spec.Default(4)
	for i := range four.Members {
		four.Members[i].IP = "127.0.0." + strconv.Itoa(60+i)
	}
	for i := range three.Members {
		three.Members[i].IP = four.Members[i].IP
	}
	live, err := snapshot.ClusterID(three.Name, ignition.InitialCluster(three))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ReadSelf(writeConf(t, four, four.Members[0], live))
	if err != nil {
		t.Fatal(err)
	}
	if s.WantID != live || !s.JoinOnly {
		t.Fatalf("WantID %x JoinOnly %v, want the running cluster's %x and join only", s.WantID, s.JoinOnly, live)
	}
	if why := s.foreignPeers([]peerState{{Name: "etcd-2", State: "etcd", ClusterID: live}}); why != "" {
		t.Errorf("a peer of the running cluster was called foreign: %s", why)
	}
	if why := s.foreignPeers([]peerState{{Name: "etcd-2", State: "etcd", ClusterID: live + 1}}); why == "" {
		t.Error("a peer of another cluster was not refused")
	}

	// The first render's images (no membership change) may bootstrap.
	s, err = ReadSelf(writeConf(t, three, three.Members[0], live))
	if err != nil {
		t.Fatal(err)
	}
	if s.WantID != live || s.JoinOnly {
		t.Errorf("first images: WantID %x JoinOnly %v", s.WantID, s.JoinOnly)
	}

	// A one-member spec whose cluster was formed with three never starts
	// a new one on a blank disk.
	one := spec.Default(1)
	one.Members[0].IP = three.Members[0].IP
	s, err = ReadSelf(writeConf(t, one, one.Members[0], live))
	if err != nil {
		t.Fatal(err)
	}
	if plan, err := s.bootstrapOrJoin(context.Background()); err == nil || !strings.Contains(err.Error(), "never bootstraps") {
		t.Errorf("a one-member image of a three-member cluster: plan %+v, err %v", plan, err)
	}
}

// TestTheClusterToJoinDoesNotMoveWithTheRuntimeEnv: firstboot writes
// etcd's runtime overrides (a join's live initial cluster, a lowered
// quota) after it decided; reading the identity again must still give
// the cluster the image was built for, never one derived from what a
// join wrote.
func TestTheClusterToJoinDoesNotMoveWithTheRuntimeEnv(t *testing.T) {
	c := spec.Default(3)
	for i := range c.Members {
		c.Members[i].IP = "127.0.0." + strconv.Itoa(70+i)
	}
	root := writeConf(t, c, c.Members[0], 0)
	before, err := ReadSelf(root)
	if err != nil {
		t.Fatal(err)
	}
	env := filepath.Join(root, layout.RuntimeEnvPath)
	if err := os.MkdirAll(filepath.Dir(env), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(env, []byte("ETCD_INITIAL_CLUSTER_STATE=existing\nETCD_INITIAL_CLUSTER=member-abc=https://127.0.0.99:2380\nETCD_QUOTA_BACKEND_BYTES=67108864\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	after, err := ReadSelf(root)
	if err != nil {
		t.Fatal(err)
	}
	if after.WantID != before.WantID || after.JoinOnly != before.JoinOnly || after.InitialCluster != before.InitialCluster || len(after.Peers) != 2 || after.Quota != before.Quota {
		t.Errorf("the runtime env moved the identity: WantID %x → %x, initial cluster %q → %q, peers %d, quota %d → %d",
			before.WantID, after.WantID, before.InitialCluster, after.InitialCluster, len(after.Peers), before.Quota, after.Quota)
	}
}
