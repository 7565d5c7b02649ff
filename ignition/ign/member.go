package ign

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"etcdimg/internal/layout"
)

// Member is this member's identity as its etcd.conf states it, read and
// parsed once by ReadMember. Its users inside the image are the backup
// service (firstboot/backupd's Load) and firstboot's readSelf, which
// reads the identity before it decides to bootstrap or join.
type Member struct {
	// Env is etcd.conf's variables, with firstboot's runtime overrides
	// (layout.RuntimeEnvPath) applied over them when read by
	// ReadRunningMember.
	Env map[string]string
	// Name is ETCD_NAME, Token ETCD_INITIAL_CLUSTER_TOKEN, PeerURL
	// ETCD_INITIAL_ADVERTISE_PEER_URLS and IP that URL's host.
	Name, Token, PeerURL, IP string
	// InitialCluster is ETCD_INITIAL_CLUSTER (NAME=PEERURL,...).
	InitialCluster string
	// Peers are the other members of the initial cluster, in its order.
	Peers []Peer
	// Names are the members' names, which are their certificates' CNs:
	// those the peer port allows (ETCD_PEER_CERT_ALLOWED_CN), else the
	// initial cluster's.
	Names []string
	// ClusterIDVar is ClusterIDVar's value as written ("" when absent),
	// and ClusterID that value parsed (0 when absent).
	ClusterIDVar string
	ClusterID    uint64
	// Quota is ETCD_QUOTA_BACKEND_BYTES (0 when absent or not a number).
	Quota int64
	// SlotGoodAfter, SlotTrialTimeout and SlotTries are the A/B slot
	// settings (SlotGoodAfterVar, SlotTrialTimeoutVar, SlotTriesVar);
	// each is its Default when its line is absent, as in a config built
	// before they were written.
	SlotGoodAfter, SlotTrialTimeout time.Duration
	SlotTries                       int
}

// Peer is another member of the initial cluster.
type Peer struct {
	Name, PeerURL string
	// ClientURL is the peer's client URL: its peer URL's host on
	// layout.ClientPort.
	ClientURL string
}

// ReadMember reads the member's etcd.conf (EtcdConfPath under root) and
// parses the identity the image was built with: the spec's name, token,
// initial cluster and recorded cluster ID. It never reads firstboot's
// runtime overrides, so the cluster this member may join (which
// join.ReadSelf derives from it) cannot move with what a join wrote. An
// etcd.conf without ETCD_NAME, ETCD_INITIAL_CLUSTER_TOKEN or
// ETCD_INITIAL_ADVERTISE_PEER_URLS, with an unparsable peer URL, or with
// a ClusterIDVar that is not a non-zero hex ID, or with slot settings
// that are not positive durations (good-after shorter than the trial
// timeout) and a count of 1 to MaxSlotTries, is an error.
func ReadMember(root string) (*Member, error) {
	env, err := readConf(root)
	if err != nil {
		return nil, err
	}
	return parseMember(env)
}

// ReadRunningMember is ReadMember with firstboot's runtime overrides
// (layout.RuntimeEnvPath under root) applied over etcd.conf, as etcd
// itself reads them: a lowered quota, a join's initial cluster. A
// missing or unreadable override file is ignored, as etcd's unit names
// it optional. The backup service reads the member this way.
func ReadRunningMember(root string) (*Member, error) {
	env, err := readConf(root)
	if err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(filepath.Join(root, layout.RuntimeEnvPath)); err == nil {
		if over, err := EnvMap(b); err == nil {
			for k, v := range over {
				env[k] = v
			}
		}
	}
	return parseMember(env)
}

// readConf reads etcd.conf's variables.
func readConf(root string) (map[string]string, error) {
	conf, err := os.ReadFile(filepath.Join(root, EtcdConfPath))
	if err != nil {
		return nil, err
	}
	env, err := EnvMap(conf)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EtcdConfPath, err)
	}
	return env, nil
}

// parseMember is ReadMember's parse of the variables.
func parseMember(env map[string]string) (*Member, error) {
	m := &Member{Env: env, Name: env["ETCD_NAME"], Token: env["ETCD_INITIAL_CLUSTER_TOKEN"], PeerURL: env["ETCD_INITIAL_ADVERTISE_PEER_URLS"]}
	if m.Name == "" || m.Token == "" || m.PeerURL == "" {
		return nil, fmt.Errorf("%s lacks ETCD_NAME, ETCD_INITIAL_CLUSTER_TOKEN or ETCD_INITIAL_ADVERTISE_PEER_URLS", EtcdConfPath)
	}
	u, err := url.Parse(m.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("ETCD_INITIAL_ADVERTISE_PEER_URLS: %w", err)
	}
	m.IP = u.Hostname()
	m.InitialCluster = env["ETCD_INITIAL_CLUSTER"]
	// The output directory's record of the running cluster's ID.
	if v := env[ClusterIDVar]; v != "" {
		id, err := strconv.ParseUint(v, 16, 64)
		if err != nil || id == 0 {
			return nil, fmt.Errorf("%s: %s=%q is not a cluster ID; rebuild the image with `etcdimg build`", EtcdConfPath, ClusterIDVar, v)
		}
		m.ClusterIDVar, m.ClusterID = v, id
	}
	if err := m.parseSlot(env); err != nil {
		return nil, err
	}
	if q := env["ETCD_QUOTA_BACKEND_BYTES"]; q != "" {
		m.Quota, _ = strconv.ParseInt(q, 10, 64)
	}
	for _, p := range strings.Split(m.InitialCluster, ",") {
		name, purl, ok := strings.Cut(p, "=")
		if !ok || name == m.Name {
			continue
		}
		pu, err := url.Parse(purl)
		if err != nil {
			return nil, fmt.Errorf("ETCD_INITIAL_CLUSTER: %w", err)
		}
		m.Peers = append(m.Peers, Peer{Name: name, PeerURL: purl, ClientURL: "https://" + net.JoinHostPort(pu.Hostname(), strconv.Itoa(layout.ClientPort))})
	}
	m.Names = memberNames(env)
	return m, nil
}

// parseSlot reads the A/B slot settings, the defaults where a line is
// absent.
func (m *Member) parseSlot(env map[string]string) error {
	m.SlotGoodAfter, m.SlotTrialTimeout, m.SlotTries = DefaultSlotGoodAfter, DefaultSlotTrialTimeout, DefaultSlotTries
	for _, d := range []struct {
		name string
		to   *time.Duration
	}{{SlotGoodAfterVar, &m.SlotGoodAfter}, {SlotTrialTimeoutVar, &m.SlotTrialTimeout}} {
		v, ok := env[d.name]
		if !ok {
			continue
		}
		p, err := time.ParseDuration(v)
		if err != nil || p <= 0 {
			return fmt.Errorf("%s: %s=%q is not a positive duration; rebuild the image with `etcdimg build`", EtcdConfPath, d.name, v)
		}
		*d.to = p
	}
	if v, ok := env[SlotTriesVar]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxSlotTries {
			return fmt.Errorf("%s: %s=%q is not a count of 1 to %d; rebuild the image with `etcdimg build`", EtcdConfPath, SlotTriesVar, v, MaxSlotTries)
		}
		m.SlotTries = n
	}
	if m.SlotGoodAfter >= m.SlotTrialTimeout {
		return fmt.Errorf("%s: %s (%s) is not shorter than %s (%s); rebuild the image with `etcdimg build`", EtcdConfPath, SlotGoodAfterVar, m.SlotGoodAfter, SlotTrialTimeoutVar, m.SlotTrialTimeout)
	}
	return nil
}

// memberNames are the members' names (their certificates' CNs) in
// etcd.conf: those the peer port allows, else the initial cluster's.
func memberNames(env map[string]string) []string {
	if cns := env["ETCD_PEER_CERT_ALLOWED_CN"]; cns != "" {
		return strings.Split(cns, ",")
	}
	var names []string
	for _, m := range strings.Split(env["ETCD_INITIAL_CLUSTER"], ",") {
		if name, _, ok := strings.Cut(m, "="); ok {
			names = append(names, name)
		}
	}
	return names
}
