// Package local is the cluster under `etcdimg up`: members booted in
// QEMU (package testvm) on one virtual LAN, the record of them in the
// output directory's run directory (the state file and its lock), their
// start and stop, the wait until they are healthy, the tool configs that
// point at their forwarded ports, the verbs that need them (status,
// stop, start, down, restore's refusals), and the Driver through which
// cluster.Lifecycle powers them. Operating the etcd of any cluster is
// package cluster's; this package adds only what QEMU owns.
//
// Booting a built directory and waiting for it:
//
//	b, err := local.Up(local.UpOptions{Cluster: c, Dir: dir, MemoryMB: 256, PortBase: 40000,
//		DataSize: local.DefaultDataSize(c), Detach: true, Stdout: os.Stdout, Stderr: os.Stderr})
//	if err != nil {
//		return err
//	}
//	if err := b.Run(ctx, 5*time.Minute); err != nil { // healthy, or powered off again
//		return err
//	}
package local
