package outdir

// The output directory's names, declared here once: render, pki's
// callers, restore, the local cluster (testvm/local) and chaos write by
// them, and every verb finds files by them. A package that owns what a
// file holds (restore's plan, render's alert rules) refers to its name
// here rather than declaring its own; pki keeps the names of the files
// inside PKIDir, which follow the runbook's.
const (
	// SpecFile is the spec as render saved it, the directory's source of
	// truth for every later command.
	SpecFile = "etcdimg.yaml"
	// PKIDir holds the CA and the members', admin's and scraper's pairs.
	PKIDir = "pki"
	// IgnitionDir holds each member's Ignition config and Butane source.
	IgnitionDir = "ignition"
	// ImagesDir holds the built images.
	ImagesDir = "images"
	// UpgradeImagesDir, inside ImagesDir, holds what `upgrade` installs on
	// cloud members, per platform: a raw image per member whose slot
	// carries its config, never uploaded (Layout.UpgradeImages).
	UpgradeImagesDir = "upgrade"
	// KubeDir holds what a Kubernetes API server needs to use the cluster:
	// its client pair, the CA, and the kubeadm and k3s snippets.
	KubeDir = "kubernetes"
	// KubeadmFile and K3sFile are those snippets, inside KubeDir.
	KubeadmFile = "kubeadm-etcd.yaml"
	K3sFile     = "k3s-datastore.yaml"
	// EtcdctlEnvFile and PrometheusFile point etcdctl and Prometheus at
	// the members' own addresses (the run directory holds copies for the
	// forwarded ports under `up`); RulesFile is the alert rules beside
	// the scrape config.
	EtcdctlEnvFile = "etcdctl.env"
	PrometheusFile = "prometheus.yml"
	RulesFile      = "prometheus-rules.yml"
	// DashboardFile is the Grafana dashboard of the cluster's metrics
	// (etcd's mixin panels and the appliance's), to import into Grafana
	// with a Prometheus that scrapes as prometheus.yml does.
	DashboardFile = "grafana-dashboard.json"
	// ClusterRecordFile names the cluster the directory's images belong to.
	ClusterRecordFile = "cluster-id.json"
	// RetiredDir keeps, by time, the certificates and keys that rotation
	// or client removal replaced: moved aside, never deleted.
	RetiredDir = "retired"
	// RestorePlanFile is the plan of a restore (`etcdimg restore`), and
	// RestoreSnapshotFile the snapshot the images carry.
	RestorePlanFile     = "restore.json"
	RestoreSnapshotFile = "restore/snapshot.db"
	// OldDir keeps, by time, the images and disks of clusters a restore
	// replaced: moved aside, never deleted.
	OldDir = "old"
	// RunDirName holds what a cluster under `up` needs while it runs, and
	// DisksDirName its members' data disks (Layout.RunDir, DisksDir).
	RunDirName   = "run"
	DisksDirName = "disks"
	// StateFile, in the run directory, is the record of the local cluster.
	StateFile = "cluster.json"
	// ChaosDir keeps each `etcdimg chaos` run's files, by time.
	ChaosDir = "chaos"
)
