package join

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdimg/ignition/ign"
	"etcdimg/internal/layout"
	"etcdimg/internal/snapshot"
)

// Self is this member as etcd.conf describes it.
type Self struct {
	Name, Cluster string
	IP            string
	PeerURL       string
	Peers         []peer // the other members of the spec
	Quota         int64
	// InitialCluster is etcd.conf's ETCD_INITIAL_CLUSTER, and WantID the
	// cluster ID that it and the token give: the only cluster this member
	// may ever join.
	InitialCluster string
	WantID         uint64
	// JoinOnly is set when the recorded cluster ID is not the one the
	// initial cluster gives: the cluster exists with another membership
	// than the spec's first one, so this member never bootstraps.
	JoinOnly bool
	// Restore, when the image carries a snapshot, is what a new cluster
	// starts from instead of an empty keyspace.
	Restore *ign.RestoreConfig
	// KeepVerdict, when set, keeps on the data disk that its etcd data
	// was found damaged, and why (datadisk.MarkRefused).
	KeepVerdict func(why string) error
	tls         *tls.Config // our certificate as a client, the CA as the trust
	serverTLS   *tls.Config // our certificate as a server, clients must have the CA's

	httpOnce sync.Once
	peerHTTP *http.Client // peerClient's
}

// peerClient is the HTTPS client for peers' peer ports, shared by every
// round of observations: its connections are kept between rounds. A TLS
// handshake costs each side about half a second of CPU under emulation,
// and a member waiting for its peers asks each of them several times a
// second; with a handshake per question, three booting members spent
// their CPU, the slowest member's boot included, on handshakes.
func (s *Self) peerClient() *http.Client {
	s.httpOnce.Do(func() {
		s.peerHTTP = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
			TLSClientConfig:     s.tls,
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     30 * time.Second,
		}}
	})
	return s.peerHTTP
}

// closePeerConns closes the kept connections to peers.
func (s *Self) closePeerConns() {
	if s.peerHTTP != nil {
		s.peerHTTP.CloseIdleConnections()
	}
}

// peer is another member of the spec.
type peer = ign.Peer

// ReadSelf reads the applied etcd.conf: the identity ign.ReadMember
// parses, the restore config an image may carry, and the cluster ID this
// member may join.
func ReadSelf(root string) (*Self, error) {
	m, err := ign.ReadMember(root)
	if err != nil {
		return nil, err
	}
	env := m.Env
	s := &Self{Name: m.Name, Cluster: m.Token, PeerURL: m.PeerURL, IP: m.IP, InitialCluster: m.InitialCluster, Quota: m.Quota, Peers: m.Peers}
	if b, err := os.ReadFile(filepath.Join(root, layout.RestoreConfigPath)); err == nil {
		s.Restore = &ign.RestoreConfig{}
		if err := json.Unmarshal(b, s.Restore); err != nil || s.Restore.Size <= 0 || len(s.Restore.SHA256) != 64 {
			return nil, fmt.Errorf("%s: not a restore config (%v); rebuild the images with `etcdimg restore`", layout.RestoreConfigPath, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if s.WantID, err = snapshot.ClusterID(s.Cluster, s.InitialCluster); err != nil {
		return nil, err
	}
	// The output directory's record wins: once membership changed after
	// the first bootstrap, the spec's initial cluster no longer gives the
	// running cluster's ID, and this image may only join that cluster,
	// never start one.
	if m.ClusterID != 0 {
		s.JoinOnly = m.ClusterID != s.WantID
		s.WantID = m.ClusterID
	}
	if s.tls, s.serverTLS, err = ign.MemberTLS(root, env["ETCD_PEER_CERT_FILE"], env["ETCD_PEER_KEY_FILE"], env["ETCD_PEER_TRUSTED_CA_FILE"]); err != nil {
		return nil, err
	}
	// The probe answers on the peer port: members only, as etcd there.
	if cns := env["ETCD_PEER_CERT_ALLOWED_CN"]; cns != "" {
		ign.AllowCNs(s.serverTLS, strings.Split(cns, ","))
	}
	return s, nil
}

// client is an etcd client with this member's certificate.
func (s *Self) client(dial time.Duration, endpoints ...string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: s.tls, DialTimeout: dial, Logger: zap.NewNop()})
}

// localURL is this member's own client URL.
func (s *Self) localURL() string {
	return "https://" + net.JoinHostPort(s.IP, strconv.Itoa(layout.ClientPort))
}
