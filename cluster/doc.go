// Package cluster operates a running cluster from the operator's machine,
// whatever runs its members (QEMU under `etcdimg up`, metal, a cloud):
//
//   - Etcd: every etcd API call the host makes (member list, status,
//     add-as-learner, promote, remove, leader move), with the admin
//     certificate (Admin builds it for an output directory), the health
//     check, and the live cluster ID (ConfirmClusterID records it);
//   - snapshots and backups from the host: Snapshot, the members' backup
//     API (NodeBackups), the S3 bucket (Bucket), and ListBackups;
//   - application clients: the etcd users and roles behind render's pairs;
//   - Lifecycle: replacing a member and rolling new images through the
//     cluster, refused before anything goes down when it would cost the
//     quorum or meets another cluster;
//   - maintenance: the cluster's alarms (Alarms, Disarm once their cause
//     is gone) and defragmentation one member at a time, the leader
//     last, under the operation lock (Defragment).
//
// Only a Driver knows how machines are powered and their disks swapped:
// testvm/local's for clusters under `up`, ManualDriver for real machines,
// where it tells the operator what to do. The package never imports QEMU
// (testvm) or the image's code (firstboot), and builds no image: callers
// hand it the image to boot. internal/arch's test keeps it so.
//
// Replacing a member of a built directory's cluster:
//
//	e, err := cluster.Admin(c, dir, nil) // nil: the members' own addresses
//	if err != nil {
//		return err
//	}
//	l := &cluster.Lifecycle{Etcd: e, Driver: cluster.Manual(c, e, os.Stdout, time.Hour), Members: c.Names(), Timeout: 5 * time.Minute}
//	if err := l.CheckReplace(ctx, "etcd-2", cluster.ReplaceOptions{}); err != nil {
//		return err // refused: nothing was touched
//	}
//	err = l.Replace(ctx, "etcd-2", cluster.ReplaceOptions{Image: "etcdimg-out/images/etcd-2.img"})
package cluster
