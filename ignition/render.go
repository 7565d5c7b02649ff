// Package ignition renders each member's Ignition config and the Butane
// source it is translated from, and reads Ignition configs back.
//
// The Butane document is built from typed values, translated by Butane's
// own library (variant fcos 1.5.0, Ignition spec 3.4.0, which Fedora CoreOS
// and Flatcar both accept) and checked by Ignition's own validator before
// anything is returned. A config carries the member's certificate and key
// and the CA certificate; it is never handed the CA key or the
// image-signing key, so it cannot hold them.
//
// It does not write files: the caller does. Reading (Parse, Contents) is
// what firstboot uses inside the appliance.
package ignition

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	butane "github.com/coreos/ignition/v2/butane/config"
	"github.com/coreos/ignition/v2/butane/config/common"
	"gopkg.in/yaml.v3"

	"etcdimg/ignition/ign"
	"etcdimg/internal/layout"
	"etcdimg/internal/spec"
)

const (
	butaneVariant  = "fcos"
	butaneVersion  = "1.5.0"
	IgnitionSpec   = "3.4.0"
	MaxConfigBytes = 16 << 10 // the AWS user-data limit
)

// Certs are what a member carries: the CA certificate, and its own
// certificate and key.
type Certs struct {
	CA, Cert, Key []byte
}

// Config is one member's rendered config.
type Config struct {
	Butane   []byte // the .bu source
	Ignition []byte // the .ign it translates to
}

// Options are what a member's config holds beyond the spec and its
// certificates.
type Options struct {
	// Token is the initial-cluster token; "" means the spec's name. A
	// restore picks a new one, so that no member of the old cluster can
	// ever join the new.
	Token string
	// Restore, when set, makes the member's config name the snapshot its
	// image carries (layout.RestoreConfigPath).
	Restore *ign.RestoreConfig
	// S3Credentials and S3CA are the contents of the spec's
	// backup.s3.credentialsFile and caFile, read by the caller.
	S3Credentials, S3CA []byte
	// ClusterID is the ID of the cluster the images belong to, as the
	// output directory records it (0: none, the spec's initial cluster
	// gives it). It goes into etcd.conf as ign.ClusterIDVar.
	ClusterID uint64
}

func (o Options) token(c *spec.Cluster) string {
	if o.Token != "" {
		return o.Token
	}
	return c.Name
}

// Render builds member m's config. c must be validated.
func Render(c *spec.Cluster, m spec.Member, certs Certs, o Options) (Config, error) {
	doc := butaneConfig{
		Variant: butaneVariant,
		Version: butaneVersion,
		Storage: butaneStorage{
			Directories: []butaneDir{
				{Path: ign.CertDir, Mode: 0o700},
				{Path: layout.DataMount, Mode: 0o700},
			},
			Files: []butaneFile{
				file(ign.HostnamePath, 0o644, m.Name+"\n"),
				file(ign.HostsPath, 0o644, string(Hosts(c))),
				file(ign.EtcdConfPath, 0o644, string(EtcdConf(c, m, o.token(c), o.ClusterID))),
				file(ign.CACertPath, 0o644, string(certs.CA)),
				file(ign.CertPath, 0o644, string(certs.Cert)),
				file(ign.KeyPath, 0o600, string(certs.Key)),
				file(ign.NetworkPath, 0o644, string(NetworkFile(c, m))),
			},
		},
		Systemd: butaneSystemd{Units: []butaneUnit{
			{Name: ign.EtcdUnitName, Enabled: true, Contents: EtcdUnit()},
		}},
	}
	backup, err := json.Marshal(BackupConfig(c, o))
	if err != nil {
		return Config{}, fmt.Errorf("ignition: %s: %w", m.Name, err)
	}
	doc.Storage.Files = append(doc.Storage.Files, file(layout.BackupConfigPath, 0o644, string(backup)+"\n"))
	if c.Backup.S3 != nil {
		doc.Storage.Files = append(doc.Storage.Files, file(layout.S3CredentialsPath, 0o600, string(o.S3Credentials)))
		if len(o.S3CA) > 0 {
			doc.Storage.Files = append(doc.Storage.Files, file(layout.S3CAPath, 0o644, string(o.S3CA)))
		}
	}
	doc.Systemd.Units = append(doc.Systemd.Units, butaneUnit{Name: layout.BackupUnitName, Enabled: true, Contents: BackupUnit()})
	if o.Restore != nil {
		b, err := json.Marshal(o.Restore)
		if err != nil {
			return Config{}, fmt.Errorf("ignition: %s: %w", m.Name, err)
		}
		doc.Storage.Files = append(doc.Storage.Files, file(layout.RestoreConfigPath, 0o644, string(b)+"\n"))
	}
	var bu bytes.Buffer
	fmt.Fprintf(&bu, "# Butane source of %s's Ignition config, written by etcdimg.\n", m.Name)
	enc := yaml.NewEncoder(&bu)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return Config{}, fmt.Errorf("ignition: %s: encode butane: %w", m.Name, err)
	}
	enc.Close()

	raw, rpt, err := butane.TranslateBytes(bu.Bytes(), common.TranslateBytesOptions{})
	if err != nil {
		return Config{}, fmt.Errorf("ignition: %s: translate butane: %w: %s", m.Name, err, oneLine(rpt.String()))
	}
	if len(rpt.Entries) > 0 {
		return Config{}, fmt.Errorf("ignition: %s: butane reported: %s", m.Name, oneLine(rpt.String()))
	}
	raw = append(raw, '\n')
	if _, err := ign.Parse(raw); err != nil {
		return Config{}, fmt.Errorf("ignition: %s: %w", m.Name, err)
	}
	if len(raw) > MaxConfigBytes {
		return Config{}, fmt.Errorf("ignition: %s: config is %d bytes, over the %d-byte user-data limit; use %s keys, which are smaller", m.Name, len(raw), MaxConfigBytes, spec.KeyECDSAP256)
	}
	return Config{Butane: bu.Bytes(), Ignition: raw}, nil
}

// metricsURLs are where etcd serves /metrics and /health: the member's
// own address, over plain HTTP as in the runbook or, with metrics.tls,
// over mTLS (etcd uses its client-port certificate and CA, and requires a
// client certificate); and loopback, always plain, for the member's own
// health checks (nothing else runs there).
func metricsURLs(c *spec.Cluster, m spec.Member) string {
	scheme := "http"
	if c.Metrics.TLS {
		scheme = "https"
	}
	urls := []string{fmt.Sprintf("%s://%s:%d", scheme, m.IP, layout.MetricsPort)}
	if !m.Addr().IsLoopback() {
		urls = append(urls, fmt.Sprintf("http://127.0.0.1:%d", layout.MetricsPort))
	}
	return strings.Join(urls, ",")
}

// EtcdConf is the member's /etc/etcd/etcd.conf: the runbook's ETCD_*
// environment file, with mTLS on both ports and plain-HTTP metrics and
// health on MetricsPort.
func EtcdConf(c *spec.Cluster, m spec.Member, token string, clusterID uint64) []byte {
	ip := m.IP
	url := func(scheme, host string, port int) string { return fmt.Sprintf("%s://%s:%d", scheme, host, port) }
	// Loopback is added so tools on the member reach it without its
	// address; a member that already sits on loopback has no need, and
	// several such members would fight over 127.0.0.1.
	listen := func(scheme string, port int) string {
		urls := []string{url(scheme, ip, port)}
		if !m.Addr().IsLoopback() {
			urls = append(urls, url(scheme, "127.0.0.1", port))
		}
		return strings.Join(urls, ",")
	}
	kv := [][2]string{
		{"ETCD_NAME", m.Name},
		{"ETCD_DATA_DIR", layout.DataDir},
		{"ETCD_SNAPSHOT_COUNT", strconv.FormatUint(c.Etcd.SnapshotCount, 10)},
		{"ETCD_HEARTBEAT_INTERVAL", ms(c.Etcd.HeartbeatInterval)},
		{"ETCD_ELECTION_TIMEOUT", ms(c.Etcd.ElectionTimeout)},
		{"ETCD_QUOTA_BACKEND_BYTES", strconv.FormatUint(uint64(c.Etcd.BackendQuota), 10)},
		{"ETCD_LISTEN_PEER_URLS", url("https", ip, layout.PeerPort)},
		{"ETCD_LISTEN_CLIENT_URLS", listen("https", layout.ClientPort)},
		{"ETCD_LISTEN_METRICS_URLS", metricsURLs(c, m)},
		{"ETCD_INITIAL_ADVERTISE_PEER_URLS", url("https", ip, layout.PeerPort)},
		{"ETCD_INITIAL_CLUSTER_STATE", "new"},
		{"ETCD_INITIAL_CLUSTER", InitialCluster(c)},
		{"ETCD_INITIAL_CLUSTER_TOKEN", token},
		{"ETCD_ADVERTISE_CLIENT_URLS", url("https", ip, layout.ClientPort)},
		{"ETCD_CLIENT_CERT_AUTH", "true"},
		{"ETCD_CERT_FILE", ign.CertPath},
		{"ETCD_KEY_FILE", ign.KeyPath},
		{"ETCD_TRUSTED_CA_FILE", ign.CACertPath},
		{"ETCD_PEER_CLIENT_CERT_AUTH", "true"},
		{"ETCD_PEER_CERT_FILE", ign.CertPath},
		{"ETCD_PEER_KEY_FILE", ign.KeyPath},
		{"ETCD_PEER_TRUSTED_CA_FILE", ign.CACertPath},
		{"ETCD_TLS_MIN_VERSION", "TLS" + c.PKI.TLSMinVersion},
		// The peer port takes members only: a certificate whose CN is a
		// member's name. The admin's (CN root) and every client's, from
		// the same CA, are refused there.
		{"ETCD_PEER_CERT_ALLOWED_CN", strings.Join(c.Names(), ",")},
		{ign.FeatureGatesVar, ign.FeatureGates(false)},
	}
	if clusterID != 0 {
		kv = append(kv, [2]string{ign.ClusterIDVar, strconv.FormatUint(clusterID, 16)})
	}
	kv = append(kv,
		[2]string{ign.SlotGoodAfterVar, c.Upgrade.GoodAfter.D().String()},
		[2]string{ign.SlotTrialTimeoutVar, c.Upgrade.TrialTimeout.D().String()},
		[2]string{ign.SlotTriesVar, strconv.Itoa(c.Upgrade.Tries)})
	if r := c.Etcd.AutoCompactionRetention.D(); r > 0 {
		kv = append(kv, [2]string{"ETCD_AUTO_COMPACTION_MODE", "periodic"}, [2]string{"ETCD_AUTO_COMPACTION_RETENTION", r.String()})
	}
	if c.PKI.TLSMinVersion == "1.2" {
		// TLS 1.3's suites are fixed (and etcd refuses a list with it).
		kv = append(kv, [2]string{"ETCD_CIPHER_SUITES", strings.Join(ign.AEADCipherSuiteNames(), ",")})
	}
	var b bytes.Buffer
	for _, p := range kv {
		fmt.Fprintf(&b, "%s=%q\n", p[0], p[1])
	}
	return b.Bytes()
}

// InitialCluster is ETCD_INITIAL_CLUSTER: every member of the spec as
// name=https://IP:peer-port, in spec order.
func InitialCluster(c *spec.Cluster) string {
	var initial []string
	for _, o := range c.Members {
		initial = append(initial, fmt.Sprintf("%s=https://%s:%d", o.Name, o.IP, layout.PeerPort))
	}
	return strings.Join(initial, ",")
}

func ms(d spec.Duration) string { return strconv.FormatInt(d.D().Milliseconds(), 10) }

// Hosts is /etc/hosts: loopback and every member, as the runbook's host
// preparation lists them.
func Hosts(c *spec.Cluster) []byte {
	var b bytes.Buffer
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
	for _, m := range c.Members {
		fmt.Fprintf(&b, "%s\t%s\n", m.IP, m.Name)
	}
	return b.Bytes()
}

// NetworkFile is the member's systemd-networkd config: its static address
// on the first Ethernet interface, the gateway and DNS.
func NetworkFile(c *spec.Cluster, m spec.Member) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "[Match]\nName=eth* en*\n\n[Network]\nAddress=%s/%d\n", m.IP, c.Prefix().Bits())
	if c.Network.Gateway != "" {
		fmt.Fprintf(&b, "Gateway=%s\n", c.Network.Gateway)
	}
	for _, d := range c.Network.DNS {
		fmt.Fprintf(&b, "DNS=%s\n", d)
	}
	for _, d := range c.Network.NTP {
		fmt.Fprintf(&b, "NTP=%s\n", d)
	}
	return b.Bytes()
}

// EtcdUnit is the runbook's etcd.service.
func EtcdUnit() string {
	return `[Unit]
Description=etcd key-value store
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
EnvironmentFile=` + ign.EtcdConfPath + `
EnvironmentFile=-` + layout.RuntimeEnvPath + `
ExecStart=` + ign.EtcdBinary + `
Restart=on-failure
RestartSec=5
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
`
}

// BackupConfig is the member's backup.json.
func BackupConfig(c *spec.Cluster, o Options) ign.BackupConfig {
	b := ign.BackupConfig{
		Cluster:         c.Name,
		IntervalSeconds: int64(c.Backup.Interval.D().Seconds()),
		Retain:          c.Backup.Retain,
		MaxAgeSeconds:   int64(c.Backup.MaxAge.D().Seconds()),
	}
	if m := c.Maintenance; m.Check != 0 {
		b.Maintenance = &ign.Maintenance{CheckSeconds: int64(m.Check.D().Seconds()), DefragFreePercent: m.DefragFreePercent}
	}
	if s3 := c.Backup.S3; s3 != nil {
		b.S3 = &ign.S3Target{Endpoint: s3.Endpoint, Bucket: s3.Bucket, Prefix: s3.Prefix, Region: s3.Region, CA: len(o.S3CA) > 0}
	}
	return b
}

// BackupUnit runs the node's backup service after etcd, supervised like
// it: one snapshot per interval for the cluster, verified, kept on the
// data disk and uploaded when S3 is set.
func BackupUnit() string {
	return `[Unit]
Description=etcd backups: verified snapshots on the data disk and in S3
After=` + ign.EtcdUnitName + `

[Service]
Type=simple
ExecStart=` + layout.BackupBinary + `
Restart=always
RestartSec=10

[Install]
WantedBy=multi-user.target
`
}

// The Butane document, as typed values (fcos 1.5.0, the subset used).
type butaneConfig struct {
	Variant string        `yaml:"variant"`
	Version string        `yaml:"version"`
	Storage butaneStorage `yaml:"storage"`
	Systemd butaneSystemd `yaml:"systemd"`
}

type butaneStorage struct {
	Directories []butaneDir  `yaml:"directories"`
	Files       []butaneFile `yaml:"files"`
}

type butaneDir struct {
	Path string   `yaml:"path"`
	Mode fileMode `yaml:"mode"`
}

type butaneFile struct {
	Path      string         `yaml:"path"`
	Mode      fileMode       `yaml:"mode"`
	Overwrite bool           `yaml:"overwrite"`
	Contents  butaneContents `yaml:"contents"`
}

type butaneContents struct {
	Inline string `yaml:"inline"`
}

type butaneSystemd struct {
	Units []butaneUnit `yaml:"units"`
}

type butaneUnit struct {
	Name     string `yaml:"name"`
	Enabled  bool   `yaml:"enabled"`
	Contents string `yaml:"contents"`
}

// fileMode is written in octal, as people read modes.
type fileMode int

func (m fileMode) MarshalYAML() (any, error) {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: fmt.Sprintf("0%o", int(m))}, nil
}

// file makes a Butane file entry. Overwrite is set because a host such as
// Fedora CoreOS already has /etc/hostname and /etc/hosts.
func file(path string, mode fileMode, contents string) butaneFile {
	return butaneFile{Path: path, Mode: mode, Overwrite: true, Contents: butaneContents{Inline: contents}}
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
