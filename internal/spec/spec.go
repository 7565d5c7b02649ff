// Package spec owns the cluster spec, etcdimg.yaml: its types, its
// defaults (the runbook's three-member plan) and its validation.
//
// Every other package takes a *Cluster that has passed Validate and never
// re-checks it. The package does no I/O beyond parsing bytes it is given.
package spec

import (
	"fmt"
	"net/netip"
	"time"

	"etcdimg/internal/layout"
)

// MaxMembers bounds the cluster size: etcd's own guidance is that clusters
// above seven members pay for replication without gaining availability.
const MaxMembers = 9

// Key algorithms for the CA and every certificate it signs.
const (
	KeyECDSAP256 = "ecdsa-p256"
	KeyRSA2048   = "rsa-2048"
)

// Cluster is the whole spec: what etcdimg.yaml holds.
type Cluster struct {
	// Name is the cluster's name and its etcd initial-cluster token.
	Name    string   `yaml:"name"`
	Members []Member `yaml:"members"`
	Network Network  `yaml:"network"`
	Etcd    Etcd     `yaml:"etcd"`
	Backup  Backup   `yaml:"backup"`
	PKI     PKI      `yaml:"pki"`
	Metrics Metrics  `yaml:"metrics"`
	Upgrade Upgrade  `yaml:"upgrade"`
	// Maintenance is what the members do for their databases by
	// themselves.
	Maintenance Maintenance `yaml:"maintenance"`

	// written holds the values as the spec file wrote them, by path,
	// for errors (nil for a spec made in code).
	written written
}

// Metrics sets how the members serve their metrics (etcd's on
// layout.MetricsPort, the appliance's on layout.NodeMetricsPort), on the
// member's own address.
type Metrics struct {
	// TLS serves both over mTLS: a scraper needs a client certificate of
	// the cluster's CA (render writes pki/prometheus.pem for it). Off, they
	// are plain HTTP, as the runbook has them.
	TLS bool `yaml:"tls"`
}

// Upgrade sets how a member takes a new image over the network: it is
// written to the slot it is not running from and booted on trial; the
// slot becomes good, or the member falls back to the old one.
type Upgrade struct {
	// GoodAfter is how long a member booted from a new slot must stay a
	// started, caught-up voter before the slot is marked good.
	GoodAfter Duration `yaml:"goodAfter"`
	// TrialTimeout is how long a trial boot may take to become good
	// before the member reboots and spends a try.
	TrialTimeout Duration `yaml:"trialTimeout"`
	// Tries is how many times a new slot is booted before the member
	// falls back to the old one (1 to MaxUpgradeTries).
	Tries int `yaml:"tries"`
}

// Maintenance sets the members' own care of their databases: scheduled
// defragmentation, and recovery from the NOSPACE alarm.
type Maintenance struct {
	// Check is how often each member looks at the cluster's databases
	// and alarms; 0 turns scheduled defragmentation and NOSPACE
	// recovery off (`etcdimg defrag` and `etcdimg alarms --disarm`
	// remain).
	Check Duration `yaml:"check"`
	// DefragFreePercent: a member whose free pages (the database file
	// less what is in use) reach this share of its quota is
	// defragmented, one member at a time under the backup lock, only
	// while every member is healthy and a verified backup is recent.
	DefragFreePercent int `yaml:"defragFreePercent"`
}

// MaxUpgradeTries bounds upgrade.tries: a slot that failed nine trial
// boots will not pass a tenth.
const MaxUpgradeTries = 9

// ReservedCN is the admin certificate's common name, etcd's root user:
// no member may be called so, because a member's name is its
// certificate's CN, and the peer port accepts members' CNs only.
const ReservedCN = layout.AdminCN

// KubeAPIServerCN is the Kubernetes API server's client certificate's
// common name (kubeadm's name for it) and its etcd user.
const KubeAPIServerCN = layout.KubeAPIServerCN

// PrometheusCN is the metrics scraper's certificate's common name. No
// etcd user has it, so it reads no key.
const PrometheusCN = "prometheus"

// IsReserved reports whether name is the common name of a certificate
// render issues itself (admin, Kubernetes API server, scraper).
func IsReserved(name string) bool { _, ok := reservedNames[name]; return ok }

// reservedNames are the common names of the certificates render issues
// itself, which no member and no application client may take.
var reservedNames = map[string]string{
	ReservedCN:      "the admin certificate's CN (etcd's root user)",
	KubeAPIServerCN: "the Kubernetes API server certificate's CN",
	PrometheusCN:    "the metrics scraper certificate's CN",
}

// Member is one etcd member and the machine that runs it.
type Member struct {
	Name string `yaml:"name"`
	IP   string `yaml:"ip"`
}

// Network is the members' shared L2 segment.
type Network struct {
	CIDR    string   `yaml:"cidr"`
	Gateway string   `yaml:"gateway,omitempty"`
	DNS     []string `yaml:"dns,omitempty"`
	// NTP servers (IPv4 addresses) set the members' clocks before etcd
	// starts; on AWS and GCP the platform's own time source comes first.
	NTP []string `yaml:"ntp,omitempty"`
}

// Etcd holds the etcd settings the runbook tunes.
type Etcd struct {
	HeartbeatInterval Duration `yaml:"heartbeatInterval"`
	ElectionTimeout   Duration `yaml:"electionTimeout"`
	SnapshotCount     uint64   `yaml:"snapshotCount"`
	BackendQuota      Size     `yaml:"backendQuota"`
	// AutoCompactionRetention is how much key history each member keeps:
	// etcd compacts older revisions itself, every retention/10 (periodic
	// mode). 0 turns it off, leaving compaction to a client, which etcd
	// allows to root only. A Kubernetes API server with its own role on
	// /registry/ cannot compact, so the members do it.
	AutoCompactionRetention Duration `yaml:"autoCompactionRetention"`
}

// Backup is the schedule of the cluster's backups: one verified snapshot
// per interval for the whole cluster, taken by whichever member holds the
// backup lock, kept on that member's data disk and, when S3 is set, in a
// bucket.
type Backup struct {
	Interval Duration `yaml:"interval"`
	// Retain is how many backups each place keeps; MaxAge, when set,
	// also drops older ones. The newest verified backup is always kept.
	Retain int      `yaml:"retain"`
	MaxAge Duration `yaml:"maxAge,omitempty"`
	S3     *S3      `yaml:"s3,omitempty"`
}

// S3 is an S3-compatible bucket backups are uploaded to.
type S3 struct {
	Endpoint string `yaml:"endpoint"` // http(s)://host[:port], as the members reach it
	Bucket   string `yaml:"bucket"`
	Prefix   string `yaml:"prefix,omitempty"`
	Region   string `yaml:"region,omitempty"`
	// CredentialsFile, on the machine that renders, holds
	// AWS_ACCESS_KEY_ID= and AWS_SECRET_ACCESS_KEY= lines. It is copied
	// into each member's config (mode 0600), never into the spec.
	CredentialsFile string `yaml:"credentialsFile"`
	// CAFile, when set, is the CA that signed the endpoint's certificate.
	CAFile string `yaml:"caFile,omitempty"`
}

// PKI sets the keys and lifetimes of the CA and the certificates.
type PKI struct {
	KeyAlgorithm string   `yaml:"keyAlgorithm"`
	CALifetime   Duration `yaml:"caLifetime"`
	CertLifetime Duration `yaml:"certLifetime"`
	// TLSMinVersion is "1.2" (with AEAD cipher suites only) or "1.3",
	// on the client and peer ports.
	TLSMinVersion string `yaml:"tlsMinVersion"`
}

// Default returns the runbook's plan with n members: etcd-1…etcd-n at
// 192.168.2.51 upward in 192.168.2.0/24. It is not validated: n may be out
// of range, and Validate says so.
func Default(n int) *Cluster {
	c := &Cluster{
		Name: "etcd-cluster-1",
		Network: Network{
			CIDR:    "192.168.2.0/24",
			Gateway: "192.168.2.1",
		},
		Etcd: Etcd{
			HeartbeatInterval: Duration(100 * time.Millisecond),
			ElectionTimeout:   Duration(1000 * time.Millisecond),
			SnapshotCount:     5000,
			BackendQuota:      2 * GiB,
			// An hour of history: far more than a Kubernetes API
			// server's watch cache needs (its own compactor keeps 5 min).
			AutoCompactionRetention: Duration(time.Hour),
		},
		Backup:      Backup{Interval: Duration(time.Hour), Retain: 24},
		Maintenance: Maintenance{Check: Duration(time.Minute), DefragFreePercent: 20},
		PKI: PKI{
			KeyAlgorithm:  KeyECDSAP256,
			CALifetime:    Duration(87600 * time.Hour),
			CertLifetime:  Duration(87600 * time.Hour),
			TLSMinVersion: "1.2",
		},
		Upgrade: Upgrade{
			GoodAfter:    Duration(30 * time.Second),
			TrialTimeout: Duration(10 * time.Minute),
			Tries:        3,
		},
	}
	base := netip.MustParseAddr("192.168.2.51")
	for i := range max(n, 0) {
		c.Members = append(c.Members, Member{Name: fmt.Sprintf("etcd-%d", i+1), IP: base.String()})
		base = base.Next()
	}
	return c
}

// Addr returns the member's IP. It is only called on validated specs.
func (m Member) Addr() netip.Addr { return netip.MustParseAddr(m.IP) }

// Names lists the members' names, in spec order.
func (c *Cluster) Names() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, m.Name)
	}
	return out
}

// Member returns the member called name.
func (c *Cluster) Member(name string) (Member, bool) {
	for _, m := range c.Members {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// Prefix returns network.cidr. It is only called on validated specs.
func (c *Cluster) Prefix() netip.Prefix { return netip.MustParsePrefix(c.Network.CIDR) }
