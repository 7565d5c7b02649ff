// Package ign is the Ignition config as the appliance reads it: parsing
// with Ignition's own validator, decoding inline file contents, and the
// paths a member's config puts files at. It is kept apart from package
// ignition, which renders configs with Butane, so that the image's binary
// carries the reader without the renderer.
package ign

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"strings"
	"time"

	ign34 "github.com/coreos/ignition/v2/config/v3_4"
	"github.com/coreos/ignition/v2/config/v3_4/types"
	"github.com/vincent-petithory/dataurl"
)

// Paths inside a member, as the runbook lays them out.
const (
	EtcdConfPath = "/etc/etcd/etcd.conf"
	CertDir      = "/etc/etcd/cert"
	CACertPath   = CertDir + "/etcd-ca.pem"
	CertPath     = CertDir + "/etcd.pem"
	KeyPath      = CertDir + "/etcd-key.pem"
	NetworkPath  = "/etc/systemd/network/10-etcd.network"
	EtcdBinary   = "/usr/bin/etcd"
	EtcdUnitName = "etcd.service"
	HostnamePath = "/etc/hostname"
	HostsPath    = "/etc/hosts"
)

// ClusterIDVar, in etcd.conf, is the ID (hex) of the cluster the member
// belongs to, as the output directory recorded it. It is not an ETCD_
// variable, so etcd ignores it. Once membership changed after the first
// bootstrap, the spec's initial cluster no longer gives that ID: the
// member then joins only the cluster named here and never bootstraps.
const ClusterIDVar = "ETCDIMG_CLUSTER_ID"

// FeatureGatesVar is etcd's --feature-gates. etcd.conf turns on, of
// etcd v3.7's alpha gates:
//   - CompactHashCheck: the leader compares the members' hashes at each
//     compaction and raises CORRUPT for the minority that differs (for
//     the whole cluster, member 0, when no majority agrees);
//   - StopGRPCServiceOnDefrag: a defragmenting member reports itself not
//     serving, so that clients go to another member meanwhile.
//
// InitialCorruptCheck is added at boot only (firstboot's runtime
// environment), when a quorum of the member's peers serve: etcd then
// compares a restarting member's data with every peer before it serves,
// and refuses to start on a mismatch. Were it always on, a healthy member
// restarting after a power cut could be refused by a damaged peer that
// started first, and the cluster never regain its quorum.
const FeatureGatesVar = "ETCD_FEATURE_GATES"

// FeatureGates is FeatureGatesVar's value, with InitialCorruptCheck when
// initialCheck.
func FeatureGates(initialCheck bool) string {
	g := "CompactHashCheck=true,StopGRPCServiceOnDefrag=true"
	if initialCheck {
		g += ",InitialCorruptCheck=true"
	}
	return g
}

// The A/B slot settings in etcd.conf, from the spec's upgrade section,
// as Go durations and a count. Like ClusterIDVar they are not ETCD_
// variables, so etcd ignores them.
const (
	// SlotGoodAfterVar is how long the member, booted from a new slot,
	// must stay a started, caught-up voter before the slot is good.
	SlotGoodAfterVar = "ETCDIMG_SLOT_GOOD_AFTER"
	// SlotTrialTimeoutVar is how long a trial boot may take to become
	// good before the member reboots and spends a try.
	SlotTrialTimeoutVar = "ETCDIMG_SLOT_TRIAL_TIMEOUT"
	// SlotTriesVar is how many times a new slot is booted before the
	// member falls back to the old one.
	SlotTriesVar = "ETCDIMG_SLOT_TRIES"
)

// The slot settings of a config built before they were written: the
// spec's defaults (a test in package ignition keeps them equal).
const (
	DefaultSlotGoodAfter    = 30 * time.Second
	DefaultSlotTrialTimeout = 10 * time.Minute
	DefaultSlotTries        = 3
	// MaxSlotTries is the spec's bound on upgrade.tries.
	MaxSlotTries = 9
)

// Config is a parsed, validated Ignition config.
type Config = types.Config

// Parse validates raw with Ignition's own parser (which runs its
// validator), accepting spec 3.0.0 to 3.4.0, and returns the config.
func Parse(raw []byte) (Config, error) {
	cfg, rpt, err := ign34.ParseCompatibleVersion(raw)
	if err != nil {
		return Config{}, fmt.Errorf("ignition: invalid config: %w: %s", err, strings.Join(strings.Fields(rpt.String()), " "))
	}
	return cfg, nil
}

// Contents returns a file's bytes from its inline data URL, decompressed.
// Only data URLs are supported: an appliance fetches nothing at boot.
func Contents(f types.File) ([]byte, error) {
	if len(f.Append) > 0 {
		return nil, fmt.Errorf("ignition: %s: append is not supported; give the whole contents", f.Path)
	}
	if f.Contents.Source == nil {
		return []byte{}, nil
	}
	src := *f.Contents.Source
	if !strings.HasPrefix(src, "data:") {
		return nil, fmt.Errorf("ignition: %s: source %.40q is not a data URL; inline the contents, the appliance fetches nothing", f.Path, src)
	}
	u, err := dataurl.DecodeString(src)
	if err != nil {
		return nil, fmt.Errorf("ignition: %s: decode data URL: %w", f.Path, err)
	}
	data := u.Data
	switch c := f.Contents.Compression; {
	case c == nil || *c == "":
	case *c == "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("ignition: %s: gunzip: %w", f.Path, err)
		}
		if data, err = io.ReadAll(zr); err != nil {
			return nil, fmt.Errorf("ignition: %s: gunzip: %w", f.Path, err)
		}
	default:
		return nil, fmt.Errorf("ignition: %s: compression %q is not supported; use gzip or none", f.Path, *c)
	}
	return data, nil
}

// File returns the config's file at path.
func File(cfg Config, path string) (types.File, bool) {
	for _, f := range cfg.Storage.Files {
		if f.Path == path {
			return f, true
		}
	}
	return types.File{}, false
}

// FileContents returns the contents of the config's file at path.
func FileContents(cfg Config, path string) ([]byte, error) {
	f, ok := File(cfg, path)
	if !ok {
		return nil, fmt.Errorf("ignition: config has no file %s", path)
	}
	return Contents(f)
}

// RestoreConfig is the member's layout.RestoreConfigPath: the snapshot a
// restored cluster's image carries in its layout.RestoreLabel partition,
// which firstboot checks against it before restoring.
type RestoreConfig struct {
	SHA256        string `json:"sha256"` // of the snapshot's Size bytes
	Size          int64  `json:"size"`
	Revision      int64  `json:"revision"`
	Keys          int    `json:"keys"`
	SkipHashCheck bool   `json:"skipHashCheck,omitempty"` // a database copied from a member's disk
}

// BackupConfig is the member's layout.BackupConfigPath: the spec's backup
// section as the node's backup service reads it. The S3 credentials are
// not in it: they sit in layout.S3CredentialsPath, mode 0600.
type BackupConfig struct {
	Cluster         string    `json:"cluster"` // the spec's name, in object keys and metrics
	IntervalSeconds int64     `json:"intervalSeconds"`
	Retain          int       `json:"retain"`
	MaxAgeSeconds   int64     `json:"maxAgeSeconds,omitempty"`
	S3              *S3Target `json:"s3,omitempty"`
	// Maintenance is the members' own care of their databases; nil or
	// CheckSeconds 0: none.
	Maintenance *Maintenance `json:"maintenance,omitempty"`
}

// Maintenance is spec.Maintenance for the member's backup service, which
// runs it.
type Maintenance struct {
	CheckSeconds      int64 `json:"checkSeconds"`
	DefragFreePercent int   `json:"defragFreePercent"`
}

// S3Target is where backups are uploaded.
type S3Target struct {
	Endpoint string `json:"endpoint"`
	Bucket   string `json:"bucket"`
	Prefix   string `json:"prefix,omitempty"`
	Region   string `json:"region,omitempty"`
	CA       bool   `json:"ca,omitempty"` // layout.S3CAPath holds the endpoint's CA
}
