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
	// NodeBinaryPath is where the node binary sits on the ESP. The
	// initramfs's /init mounts the ESP read-only on ESPMount and runs the
	// binary from there as NodeBinary: the kernel unpacks every byte of
	// an initramfs into memory at every boot (slowly under emulation,
	// and into memory it cannot reclaim), while a binary on a disk is read
	// page by page as it runs.
	NodeBinaryPath = ConfigDir + "/etcdnode"
	ESPMount       = "/boot"
	NodeBinary     = ESPMount + NodeBinaryPath
)

// Boot slots. The ESP holds systemd-boot as the removable-media loader
// and up to two slots, each a UKI under EFI/Linux and a directory of its
// own under SlotsDir. systemd-boot boots the first entry in its order
// (names compared as versions, highest first; entries whose boot-count
// tries are spent last), so a slot's entry is named
// etcdimg-GENERATION-ID.efi, with "+TRIES" while it is on trial. The
// UKI's command line names the slot it belongs to (SlotArg=ID); the
// initramfs's /init mounts the whole ESP on ESPRoot and binds that
// slot's directory on ESPMount+ConfigDir, so that NodeBinary and
// ConfigPath name the running slot's files.
const (
	SlotArg   = "etcdimg.slot"
	ESPRoot   = "/esp"
	SlotsDir  = ConfigDir
	EntryDir  = "/EFI/Linux"
	LoaderDir = "/loader"
	// Files of a slot's directory besides the node binary and node.ign:
	// its manifest, the manifest's signature by the image-signing key,
	// and the public key that signs the updates this slot accepts.
	SlotManifestFile  = "slot.json"
	SlotSignatureFile = "slot.sig"
	SlotSigningKey    = "signing.pub"
	// SlotTrialFile is what a slot on trial wrote on its way down when it
	// did not come up good: why. It sits in the slot's directory.
	SlotTrialFile = "trial.txt"
)

// The initramfs, which is the appliance's root file system: a small
// /init (package preinit), the modules, and the links by which the node
// binary's programs are run.
const (
	// ModuleDir holds the kernel modules, as plain .ko files.
	ModuleDir = "/lib/modules"
	// ModuleOrder lists ModuleDir's files, dependencies first, one per
	// line: the order firstboot loads them in.
	ModuleOrder = ModuleDir + "/load-order"
	// ModuleAliases lists, as depmod's modules.alias does, "alias PATTERN
	// NAME" for each device pattern a module serves; ModuleDeps, as
	// modules.dep, "NAME.ko: DEP.ko ..." for each module.
	ModuleAliases = ModuleDir + "/modules.alias"
	ModuleDeps    = ModuleDir + "/modules.dep"
)

// The data disk. It is mounted at DataMount and holds etcd's data
// directory, the node's backups and the marker side by side, so that
// neither backups nor the marker sit inside the directory etcd owns.
const (
	// DataLabel is both the GPT partition name that marks a data partition
	// and the ext4 volume label of a data file system etcdimg made.
	DataLabel = "etcd-data"
	// DataMount is where the data disk is mounted.
	DataMount = "/var/lib/etcdimg"
	// DataDir is etcd's data directory (ETCD_DATA_DIR) on the data disk.
	DataDir = DataMount + "/etcd"
	// LegacyMemberDir is where disks written before DataDir moved into a
	// subdirectory keep etcd's member directory; firstboot moves it into
	// DataDir on the first boot that finds it.
	LegacyMemberDir = DataMount + "/member"
	// BackupDir holds the node's verified backups and their manifests.
	BackupDir = DataMount + "/backups"
	// MarkerFile, on the data disk's root, records which cluster and
	// member the disk belongs to.
	MarkerFile = DataMount + "/etcdimg.json"
)

// The snapshot a restored cluster starts from travels in a partition of
// its own on the boot disk, beside the ESP; the member's config names
// its size and SHA-256 (RestoreConfigPath).
const (
	RestoreLabel      = "etcd-restore"
	RestoreConfigPath = "/etc/etcdimg/restore.json"
)

// The backup service's configuration, from the member's config. The S3
// credentials travel like the member key: in this member's config only,
// mode 0600.
const (
	BackupConfigPath  = "/etc/etcdimg/backup.json"
	S3CredentialsPath = "/etc/etcdimg/s3-credentials"
	S3CAPath          = "/etc/etcdimg/s3-ca.pem"
	BackupUnitName    = "etcd-backup.service"
	BackupBinary      = "/usr/bin/etcd-backup"
)

// Ports every member serves. They are fixed so that a member's address is
// all an operator, a firewall rule or a Prometheus target needs.
const (
	ClientPort  = 2379
	PeerPort    = 2380
	MetricsPort = 2381
	// NodeMetricsPort serves the appliance's own metrics (backups,
	// certificate expiry) over plain HTTP, like MetricsPort.
	NodeMetricsPort = 2382
	// BackupPort serves the node's backups (list and download) over
	// mTLS: a client certificate from the cluster's CA is required.
	BackupPort = 2383
	// NodeAPIPort serves the node API over mTLS, to the admin (CN
	// AdminCN) and the members only: the boot slots' state, updates into
	// the inactive slot, and the reboot into it. PID 1 serves it.
	NodeAPIPort = 2384
)

// RuntimeEnvPath is the environment file firstboot writes for what it
// decides at boot: ETCD_INITIAL_CLUSTER_STATE and ETCD_INITIAL_CLUSTER
// when a member with a blank disk joins an existing cluster,
// ETCD_QUOTA_BACKEND_BYTES when the data disk is too small for the
// spec's quota, and ETCD_FEATURE_GATES when a member restarts from its
// data (with etcd's initial corruption check when a quorum of its peers
// serve). etcd.service names it optional, after etcd.conf, so it
// overrides; on a host that is not the appliance it never exists.
const RuntimeEnvPath = "/run/etcdimg/etcd.env"

// SlotStatusPath is where PID 1 keeps the boot slots' state (the node
// API's status) for the metrics (etcdimg_image_info).
const SlotStatusPath = "/run/etcdimg/slot.json"

// Platforms. The image builder writes the platform on the kernel command
// line (PlatformArg=NAME, as Ignition's ignition.platform.id); firstboot
// reads it there to pick where the config comes from and how the network
// comes up. qemu and metal images embed each member's config and use the
// static address it names; a cloud image is one generic image for every
// member, whose config is the instance's user-data, fetched after DHCP.
const (
	PlatformArg = "etcdimg.platform"

	PlatformQEMU      = "qemu"
	PlatformMetal     = "metal"
	PlatformAWS       = "aws"
	PlatformGCP       = "gcp"
	PlatformAzure     = "azure"
	PlatformOpenStack = "openstack"

	// MetadataAddr is the link-local address of every cloud's metadata
	// service (AWS IMDS, GCP's metadata server, Azure IMDS, OpenStack's
	// metadata service).
	MetadataAddr = "169.254.169.254"
	// AzureWireServer is Azure's wire server, to which an image without
	// the Azure agent reports that it is ready.
	AzureWireServer = "168.63.129.16"
	// ConfigDriveLabel is the file system label of OpenStack's config
	// drive, which holds openstack/latest/user_data.
	ConfigDriveLabel = "config-2"
)

// Certificates' common names that the image builder and the appliance
// must agree on. With authentication on, etcd takes a client
// certificate's CN as its user.
const (
	// AdminCN is the admin certificate's CN, which etcd makes root (its
	// root user is called so): render issues the admin certificate with
	// it, and the members allow it (authz's root user, the backups API).
	// No member may be called so.
	AdminCN = "root"
	// KubeAPIServerCN is the Kubernetes API server's client
	// certificate's CN (kubeadm's name for it) and its etcd user: render
	// issues the certificate, the members' authz makes the user.
	KubeAPIServerCN = "kube-apiserver-etcd-client"
)

// The serial console, which the appliance writes and the host reads (the
// local cluster's status, tests, `make bench`).
const (
	// ConsolePrefix starts every boot line; tests and operators grep for it.
	ConsolePrefix = "firstboot:"
	// ConsoleStopped starts the line of a boot that cannot go on.
	ConsoleStopped = "BOOT STOPPED:"
)

// OperationLockKey holds the cluster's one operation lock (cluster's
// OperationLock): the key of whichever operator's upgrade, replace, roll
// or rotation is running. The members read it too: their scheduled
// defragmentation waits while an operation holds the cluster.
const OperationLockKey = "/etcdimg/operation/lock"
