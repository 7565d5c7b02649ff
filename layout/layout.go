// Package layout declares, once, what the image builder and the appliance
// must agree on: the names and paths on the boot disk, where the
// initramfs keeps its modules, the data disk's label and mount point, the
// ports every member serves, and the files firstboot hands etcd at run
// time. Package image writes by these names, firstboot reads by them, and
// the host side (ignition, cluster) derives URLs from the same ports.
//
// It holds constants only: no code, no imports, so that every package,
// the in-image binary included, can depend on it.
package layout

// The boot disk (GPT, one EFI system partition).
const (
	// ESPLabel is the GPT partition name of the EFI system partition.
	ESPLabel = "ESP"
	// ConfigDir and ConfigPath are where the member's Ignition config sits
	// on the ESP, as absolute paths inside that file system.
	ConfigDir  = "/etcdimg"
	ConfigPath = ConfigDir + "/node.ign"
)

// The initramfs, which is the appliance's root file system.
const (
	// ModuleDir holds the kernel modules, as plain .ko files.
	ModuleDir = "/lib/modules"
	// ModuleOrder lists ModuleDir's files, dependencies first, one per
	// line: the order firstboot loads them in.
	ModuleOrder = ModuleDir + "/load-order"
)

// The data disk.
const (
	// DataLabel is both the GPT partition name that marks a data partition
	// and the ext4 volume label of a data file system etcdimg made.
	DataLabel = "etcd-data"
	// DataDir is where the data disk is mounted and etcd keeps its data.
	DataDir = "/var/lib/etcd"
	// MarkerFile, on the data disk's root, records which cluster and
	// member the disk belongs to.
	MarkerFile = DataDir + "/etcdimg.json"
)

// Ports every member serves. They are fixed so that a member's address is
// all an operator, a firewall rule or a Prometheus target needs.
const (
	ClientPort  = 2379
	PeerPort    = 2380
	MetricsPort = 2381
)

// RuntimeEnvPath is the environment file firstboot writes for what it
// decides at boot: ETCD_INITIAL_CLUSTER_STATE and ETCD_INITIAL_CLUSTER
// when a member with a blank disk joins an existing cluster, and
// ETCD_QUOTA_BACKEND_BYTES when the data disk is too small for the
// spec's quota. etcd.service names it optional, after etcd.conf, so it
// overrides; on a host that is not the appliance it never exists.
const RuntimeEnvPath = "/run/etcdimg/etcd.env"
