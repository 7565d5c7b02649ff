package join

import (
	"context"
	"fmt"
	"time"

	"etcdimg/firstboot/datadisk"
)

// recordClusterID waits for etcd to answer locally and writes the
// cluster ID it reports into the data disk's marker.
func (s *Self) recordClusterID(ctx context.Context) {
	local := s.localURL()
	for {
		cli, err := s.client(3*time.Second, local)
		if err == nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			r, err := cli.Status(cctx, local)
			cancel()
			cli.Close()
			if err == nil && r.Header.ClusterId != 0 {
				id := fmt.Sprintf("%x", r.Header.ClusterId)
				if err := datadisk.RecordClusterID(id); err != nil {
					logf("marker: %v", err)
				}
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

// foreignCluster says why the disk's data must not serve, if a peer runs
// etcd in a cluster whose ID is not want.
func foreignCluster(want string, states []peerState) string {
	for _, st := range states {
		if st.State == "etcd" && st.ClusterID != 0 {
			if got := fmt.Sprintf("%x", st.ClusterID); got != want {
				return fmt.Sprintf("this data disk holds cluster %s, but %s runs cluster %s: the cluster was rebuilt without this disk; etcd stopped, the disk left as it is. Attach a blank disk to rejoin", want, st.Name, got)
			}
		}
	}
	return ""
}

// watchClusterID compares the cluster ID on the data disk with the one
// the peers run, until one answers or a minute has passed.
func (s *Self) watchClusterID(ctx context.Context, want string) string {
	defer s.closePeerConns()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		states := s.observeAll(ctx)
		if why := foreignCluster(want, states); why != "" {
			return why
		}
		for _, st := range states {
			if st.State == "etcd" {
				return ""
			}
		}
		select {
		case <-ctx.Done():
			return ""
		case <-time.After(time.Second):
		}
	}
	return ""
}
