package firstboot

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdimg/firstboot/datadisk"
	"etcdimg/ignition/ign"
	"etcdimg/internal/authz"
	"etcdimg/internal/layout"
	"etcdimg/internal/snapshot"
)

// Bootstrap or join, decided here with nothing from outside the cluster:
//
//   - a member whose data disk holds etcd data starts etcd from it;
//   - a member with a blank disk asks every peer of the spec, over mTLS
//     with its own certificate, whether it holds data: a peer running etcd
//     answers on its client port; a peer that is itself blank and deciding
//     answers on its peer port (etcd is not there yet) with "blank";
//   - only when every peer says blank does it bootstrap a new cluster (the
//     spec's first boot): all of them then start `new` with the same
//     initial cluster, which is consistent. A peer whose etcd has not
//     decided its cluster's version counts with them only if it said, in
//     this member's hearing, that it was starting the new cluster: a
//     member restarting from a WAL written right after the first
//     bootstrap answers exactly as one bootstrapping does;
//   - when etcd answers anywhere, the cluster exists: the member removes
//     its stale entry (its old self, forgotten vote and log), adds itself
//     as a learner, starts `existing`, and promotes itself once caught up;
//   - otherwise it waits and says whom for. It never starts `new` while
//     any peer may hold data.

// probePath is where a blank, deciding member answers its peers.
const probePath = "/etcdimg/v1/disk"

// probeReply is a deciding member's answer.
type probeReply struct {
	Cluster string `json:"cluster"`
	Member  string `json:"member"`
	Disk    string `json:"disk"` // "blank", or "starting" once it decided to start the new cluster
}

// self is this member as etcd.conf describes it.
type self struct {
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
	Restore   *ign.RestoreConfig
	tls       *tls.Config // our certificate as a client, the CA as the trust
	serverTLS *tls.Config // our certificate as a server, clients must have the CA's

	httpOnce sync.Once
	peerHTTP *http.Client // peerClient's
}

// peerClient is the HTTPS client for peers' peer ports, shared by every
// round of observations: its connections are kept between rounds. A TLS
// handshake costs each side about half a second of CPU under emulation,
// and a member waiting for its peers asks each of them several times a
// second; with a handshake per question, three booting members spent
// their CPU, the slowest member's boot included, on handshakes.
func (s *self) peerClient() *http.Client {
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
func (s *self) closePeerConns() {
	if s.peerHTTP != nil {
		s.peerHTTP.CloseIdleConnections()
	}
}

// peer is another member of the spec.
type peer struct {
	Name, PeerURL, ClientURL string
}

// readSelf reads the applied etcd.conf.
func readSelf(root string) (*self, error) {
	data, err := os.ReadFile(filepath.Join(root, ign.EtcdConfPath))
	if err != nil {
		return nil, err
	}
	env, err := ign.EnvMap(data)
	if err != nil {
		return nil, err
	}
	s := &self{Name: env["ETCD_NAME"], Cluster: env["ETCD_INITIAL_CLUSTER_TOKEN"], PeerURL: env["ETCD_INITIAL_ADVERTISE_PEER_URLS"]}
	if s.Name == "" || s.Cluster == "" || s.PeerURL == "" {
		return nil, fmt.Errorf("%s lacks ETCD_NAME, ETCD_INITIAL_CLUSTER_TOKEN or ETCD_INITIAL_ADVERTISE_PEER_URLS", ign.EtcdConfPath)
	}
	u, err := url.Parse(s.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("ETCD_INITIAL_ADVERTISE_PEER_URLS: %w", err)
	}
	s.IP = u.Hostname()
	if b, err := os.ReadFile(filepath.Join(root, layout.RestoreConfigPath)); err == nil {
		s.Restore = &ign.RestoreConfig{}
		if err := json.Unmarshal(b, s.Restore); err != nil || s.Restore.Size <= 0 || len(s.Restore.SHA256) != 64 {
			return nil, fmt.Errorf("%s: not a restore config (%v); rebuild the images with `etcdimg restore`", layout.RestoreConfigPath, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	s.InitialCluster = env["ETCD_INITIAL_CLUSTER"]
	if s.WantID, err = snapshot.ClusterID(s.Cluster, s.InitialCluster); err != nil {
		return nil, err
	}
	// The output directory's record wins: once membership changed after
	// the first bootstrap, the spec's initial cluster no longer gives the
	// running cluster's ID, and this image may only join that cluster,
	// never start one.
	if v := env[ign.ClusterIDVar]; v != "" {
		id, err := strconv.ParseUint(v, 16, 64)
		if err != nil || id == 0 {
			return nil, fmt.Errorf("%s: %s=%q is not a cluster ID; rebuild the image with `etcdimg build`", ign.EtcdConfPath, ign.ClusterIDVar, v)
		}
		s.JoinOnly = id != s.WantID
		s.WantID = id
	}
	if q := env["ETCD_QUOTA_BACKEND_BYTES"]; q != "" {
		s.Quota, _ = strconv.ParseInt(q, 10, 64)
	}
	for _, m := range strings.Split(env["ETCD_INITIAL_CLUSTER"], ",") {
		name, purl, ok := strings.Cut(m, "=")
		if !ok || name == s.Name {
			continue
		}
		pu, err := url.Parse(purl)
		if err != nil {
			return nil, fmt.Errorf("ETCD_INITIAL_CLUSTER: %w", err)
		}
		s.Peers = append(s.Peers, peer{Name: name, PeerURL: purl, ClientURL: "https://" + net.JoinHostPort(pu.Hostname(), strconv.Itoa(layout.ClientPort))})
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
func (s *self) client(dial time.Duration, endpoints ...string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: s.tls, DialTimeout: dial, Logger: zap.NewNop()})
}

// localURL is this member's own client URL.
func (s *self) localURL() string {
	return "https://" + net.JoinHostPort(s.IP, strconv.Itoa(layout.ClientPort))
}

// peerState is what one peer said.
type peerState struct {
	Name string
	// "etcd" (answers clients), "blank" (its probe: deciding, no WAL),
	// "starting" (its probe: starting the new cluster), "undecided"
	// (etcd on its peer port, its cluster's version not decided: a WAL,
	// of a new cluster or of one restarting from data), "data" (etcd
	// with a cluster version, not answering clients yet), "restored"
	// (see observe), "unreachable".
	State     string
	ClusterID uint64
	Detail    string
}

// observe asks one peer what it holds: first on its peer port (a blank
// member's own answer, or etcd's), then, if etcd is there, on its client
// port. A peer whose peer port does not answer is unreachable, and costs
// one timeout, not two.
func (s *self) observe(ctx context.Context, p peer) peerState {
	st := peerState{Name: p.Name, State: "unreachable"}
	hc := s.peerClient()
	var header http.Header
	get := func(path string) (int, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(p.PeerURL, "/")+path, nil)
		if err != nil {
			return 0, nil, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		header = resp.Header
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return resp.StatusCode, body, nil
	}
	// etcd's Status on the client port, asked last: only of a peer whose
	// peer port holds an etcd that has decided its cluster's version. A
	// peer still deciding or bootstrapping is asked nothing more in a
	// round (a new etcd client for each peer and round cost the waiting
	// members CPU they share with the booting ones).
	type status struct {
		clusterID uint64
		err       error
	}
	askStatus := func() status {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		cli, err := s.client(2*time.Second, p.ClientURL)
		if err != nil {
			return status{err: err}
		}
		defer cli.Close()
		r, err := cli.Status(cctx, p.ClientURL)
		if err != nil {
			return status{err: err}
		}
		return status{clusterID: r.Header.ClusterId}
	}
	code, body, perr := get(probePath)
	if perr != nil {
		// Nothing answers on its peer port (refused, no route, no
		// handshake), so no etcd of the cluster is there: do not wait
		// out the client port's dial too (2 s a round, measured, while
		// the last member was still booting). Unreachable only ever
		// means wait.
		st.Detail = oneLine(perr.Error())
		return st
	}
	var r probeReply
	if code == http.StatusOK && json.Unmarshal(body, &r) == nil && (r.Disk == "blank" || r.Disk == "starting") && r.Cluster == s.Cluster && r.Member == p.Name {
		st.State = r.Disk
		return st
	}
	// etcd is on the peer port, so the peer has a WAL. Its /version
	// says whether its cluster has decided a version. One that has not
	// is known at once, without waiting out the client port's timeout
	// (its etcd does not serve clients before a quorum), but not what
	// it holds: a member bootstrapping a new cluster answers
	// `not_decided` until a quorum forms, and so does a member restarting
	// from data written right after the first bootstrap, before the
	// version was decided. decide tells them apart only by what the peer
	// said before (markStarters).
	if code, body, err := get("/version"); err == nil && code == http.StatusOK {
		var v struct {
			Cluster string `json:"etcdcluster"`
		}
		if json.Unmarshal(body, &v) == nil && v.Cluster == "not_decided" {
			st.State, st.Detail = "undecided", "etcd on the peer port, its cluster's version not decided: restarting from its data, or starting a new cluster"
			return st
		}
	}
	if res := askStatus(); res.err == nil {
		st.State, st.ClusterID = "etcd", res.clusterID
		return st
	}
	// etcd that does not answer clients yet, with data.
	st.State, st.Detail = "data", "etcd on the peer port, not answering clients yet"
	// A peer restored from a snapshot has decided a version (the
	// snapshot's) but, until a quorum of restored members forms, no
	// member of its cluster has ever published a client URL. Such a peer
	// of this very cluster is starting it from the image's snapshot.
	if code, body, err := get("/members"); err == nil && code == http.StatusOK {
		var members []struct {
			ClientURLs []string `json:"clientURLs"`
		}
		id, _ := strconv.ParseUint(header.Get("X-Etcd-Cluster-ID"), 16, 64)
		st.ClusterID = id
		served := false
		if json.Unmarshal(body, &members) == nil {
			for _, m := range members {
				served = served || len(m.ClientURLs) > 0
			}
			if !served && id != 0 && id == s.WantID {
				st.State, st.Detail = "restored", "restored from the snapshot, waiting for a quorum"
			}
		}
	}
	return st
}

// observeAll asks every peer, in parallel.
func (s *self) observeAll(ctx context.Context) []peerState { return s.observePeers(ctx, s.Peers) }

// observePeers asks peers, in parallel; the states keep their order.
func (s *self) observePeers(ctx context.Context, peers []peer) []peerState {
	out := make([]peerState, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = s.observe(ctx, p)
		}()
	}
	wg.Wait()
	return out
}

// Decisions of decide.
const (
	decideNew  = "new"
	decideJoin = "join"
	decideWait = "wait"
)

// decide is the rule, over what each peer said (after markStarters):
// join when etcd answers anywhere; new only when every peer holds no
// data of a cluster that existed before; else wait. A peer holds no such
// data when it is
//
//   - "blank": its probe says its disk has no WAL and it is deciding;
//   - "starting": it said so to this member, having seen every member
//     blank; whatever WAL it has since is the new cluster's own;
//   - "restored": it restored the image's snapshot into this very
//     cluster, which never served.
//
// Every other peer may hold data, and "undecided" is the one to mind:
// etcd with a WAL whose cluster has not decided its version. It is as
// likely a member restarting from data written just after the first
// bootstrap as one starting a new cluster, and starting `new` beside it
// with an empty log could overwrite its log. Unless it was heard
// starting, it holds data: wait.
func decide(states []peerState) string {
	blank := 0
	for _, st := range states {
		switch st.State {
		case "etcd":
			return decideJoin
		case "blank", "starting", "restored":
			blank++
		case "undecided", "data", "unreachable":
			// may hold data: wait
		}
	}
	if blank == len(states) {
		return decideNew
	}
	return decideWait
}

// probe is this member's answer to its peers while it decides, and then
// while it prepares to start the new cluster (restoring a snapshot can
// take seconds): "blank", then "starting".
type probe struct {
	stop     func()
	reply    atomic.Value // []byte
	starting atomic.Bool
	mu       sync.Mutex
	told     map[string]bool // peers (their certificates' CNs) answered "starting"
}

func (p *probe) set(s *self, disk string) {
	b, _ := json.Marshal(probeReply{Cluster: s.Cluster, Member: s.Name, Disk: disk})
	p.reply.Store(b)
	p.starting.Store(disk == "starting")
}

// waitTold waits until each of peers has heard "starting", for at most
// bound, and reports whether all did. A member that starts the new
// cluster hands its peer port to etcd, and a peer that never heard
// "starting" from it cannot tell it from a member that went away: it
// waits until that etcd serves its peers, which took 3.5-5 s of a
// three-member `up`, against the fraction of a second a deciding peer
// takes to ask again.
//
// Meanwhile it asks the peers not yet told. One that answers "starting"
// decided the same at the same time and waits likewise, for this member
// to ask it: it needs no telling, and the asking tells it. Before, two
// members deciding together each waited out the bound for the other, 3 s
// of a three-member `up` (measured: both decided 4 s after the third).
func (s *self) waitTold(ctx context.Context, pr *probe, peers []peer, bound time.Duration) bool {
	return s.waitHeard(ctx, pr, peers, len(peers), bound)
}

// waitHeard is waitTold until at least need of peers have heard
// "starting"; with no bound (0) it waits as long as ctx lasts.
func (s *self) waitHeard(ctx context.Context, pr *probe, peers []peer, need int, bound time.Duration) bool {
	if bound > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, bound)
		defer cancel()
	}
	var asked time.Time
	for {
		var left []peer
		for _, p := range peers {
			if !pr.heard(p.Name) {
				left = append(left, p)
			}
		}
		if len(peers)-len(left) >= need {
			return true
		}
		if time.Since(asked) >= 200*time.Millisecond {
			for i, st := range s.observePeers(ctx, left) {
				if st.State == "starting" || st.State == "undecided" {
					pr.markTold(left[i].Name)
				}
			}
			asked = time.Now()
			continue
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// toTellForQuorum is how many of the deciding peers must hear
// "starting" before a member starting the new cluster hands its port to
// etcd, so that the members known to start it (itself, the peers that
// were starting already, and those told) make a quorum of the 1+peers.
func toTellForQuorum(peers, deciding int) int {
	starters := 1 + peers - deciding
	return max(0, (1+peers)/2+1-starters)
}

// firstAsked is, for the member whose peer URL sorts first, the peer
// whose URL sorts next; ok is false for every other member. etcd asks its
// peers in that order whether it was bootstrapped (see serveProbe's
// /members): every other member asks the first one first, and is
// answered at once while its probe is up; the first one asks the next
// one first, and is answered at once once that etcd serves. So the
// first member starts its etcd last, when the next one serves.
func (s *self) firstAsked() (peer, bool) {
	var next peer
	for _, p := range s.Peers {
		if p.PeerURL < s.PeerURL {
			return peer{}, false
		}
		if next.PeerURL == "" || p.PeerURL < next.PeerURL {
			next = p
		}
	}
	return next, next.PeerURL != ""
}

// waitServing waits, for at most bound, until p's etcd serves its peer
// port. Asking its probe meanwhile tells it this member is starting.
func (s *self) waitServing(ctx context.Context, p peer, bound time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	for {
		switch s.observe(ctx, p).State {
		case "undecided", "restored", "data", "etcd":
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// heard reports whether the peer named has been answered "starting".
func (p *probe) heard(name string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.told[name]
}

// markTold records that the peer named knows this member is starting.
func (p *probe) markTold(name string) {
	p.mu.Lock()
	p.told[name] = true
	p.mu.Unlock()
}

// markStarters remembers the peers that said they are starting the new
// cluster, and keeps them starters while their peer port is silent or
// their etcd runs without a decided version (the new cluster, waiting
// for a quorum) or loads its data (of this cluster) without serving yet.
// A peer never heard starting gets no such credit: an undecided etcd
// may be restarting from its data (see decide).
func markStarters(states []peerState, starting map[string]bool, want uint64) {
	for i, st := range states {
		switch {
		case st.State == "starting":
			starting[st.Name] = true
		case st.State == "blank":
			delete(starting, st.Name) // it rebooted before starting
		case starting[st.Name] && (st.State == "unreachable" || st.State == "undecided" || (st.State == "data" && (st.ClusterID == 0 || st.ClusterID == want))):
			states[i].State = "starting"
		}
	}
}

// serveProbe answers peers that this member is blank and deciding, on
// its peer address, until its stop is called.
func (s *self) serveProbe() (*probe, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(s.IP, strconv.Itoa(layout.PeerPort)))
	if err != nil {
		return nil, err
	}
	p := &probe{told: map[string]bool{}}
	p.set(s, "blank")
	mux := http.NewServeMux()
	mux.HandleFunc(probePath, func(w http.ResponseWriter, r *http.Request) {
		starting := p.starting.Load()
		w.Header().Set("Content-Type", "application/json")
		w.Write(p.reply.Load().([]byte))
		if starting && r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			p.markTold(r.TLS.PeerCertificates[0].Subject.CommonName)
		}
	})
	// While starting, the probe answers etcd's own question too. A new
	// member's etcd asks its peers' /members, in the order of their peer
	// URLs, whether it was bootstrapped before, and waits 1 s for each
	// peer whose etcd holds the port without serving yet (its own start):
	// 2 s of every member of a three-member cluster starting together
	// (measured from etcd's "bootstrapping cluster" log line). An empty
	// list under this cluster's ID ends that question at once: nobody was
	// bootstrapped, which a member starting the new cluster knows.
	mux.HandleFunc("/members", func(w http.ResponseWriter, r *http.Request) {
		if !p.starting.Load() {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Etcd-Cluster-ID", strconv.FormatUint(s.WantID, 16))
		w.Write([]byte("[]"))
	})
	srv := &http.Server{Handler: mux, TLSConfig: s.serverTLS, ReadHeaderTimeout: 5 * time.Second, ErrorLog: nil}
	done := make(chan struct{})
	goSafe("join probe", func() {
		defer close(done)
		srv.Serve(tls.NewListener(ln, s.serverTLS))
	})
	p.stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		srv.Close()
		<-done
	}
	return p, nil
}

// joinPlan is the outcome of the join step.
type joinPlan struct {
	Env     []string // ETCD_* overrides for etcd.service
	Learner uint64   // our member ID when we joined as a learner
	New     bool     // the member starts the cluster (or restores it)
	Detail  string
	// Release, when set, ends the probe that tells peers this member
	// is starting the new cluster; call it just before etcd starts.
	Release func()
}

// bootstrapOrJoin runs the rule for a member with a blank disk. It returns
// only with a decision, or when ctx ends.
func (s *self) bootstrapOrJoin(ctx context.Context) (*joinPlan, error) {
	if len(s.Peers) == 0 {
		if s.JoinOnly {
			return nil, errors.New(s.joinOnlyWhy())
		}
		return &joinPlan{Detail: "a one-member cluster: new", New: true}, nil
	}
	pr, err := s.serveProbe()
	if err != nil {
		return nil, fmt.Errorf("answer peers on %s:%d: %w", s.IP, layout.PeerPort, err)
	}
	handedOver := false
	defer func() {
		s.closePeerConns()
		if !handedOver {
			pr.stop()
		}
	}()
	// A peer that said it is starting the new cluster saw every member
	// blank, this one included: it stays a starter while it restores and
	// while its etcd loads (its peer port silent), unless it answers
	// otherwise.
	starting := map[string]bool{}
	lastSaid := time.Time{}
	for {
		states := s.observeAll(ctx)
		markStarters(states, starting, s.WantID)
		if why := s.foreignPeers(states); why != "" {
			return nil, errors.New(why)
		}
		switch decide(states) {
		case decideNew:
			if s.JoinOnly {
				if time.Since(lastSaid) > 10*time.Second {
					logf("join: %s", s.joinOnlyWhy())
					lastSaid = time.Now()
				}
				break
			}
			// The probe now says "starting" until etcd is about to
			// take the port.
			pr.set(s, "starting")
			handedOver = true
			// Peers still deciding hear "starting" before the port
			// goes to etcd; those already starting need not.
			var deciding []peer
			for i, st := range states {
				if st.State == "blank" {
					deciding = append(deciding, s.Peers[i])
				}
			}
			release := func() {
				if !s.waitTold(ctx, pr, deciding, 3*time.Second) {
					// A peer that never heard "starting" takes this
					// member's etcd, whose version is undecided until a
					// quorum forms, for one that may hold data, and
					// waits for it to serve (decide). Unless the members
					// known to start make a quorum, that would be for
					// ever: keep telling until they do.
					if need := toTellForQuorum(len(s.Peers), len(deciding)); need > 0 {
						logf("join: starting the new cluster; waiting until %d more of the members still deciding hear so, for a quorum of members known to start it", need)
						s.waitHeard(ctx, pr, deciding, need, 0)
					}
				}
				if next, ok := s.firstAsked(); ok && s.Restore == nil {
					s.waitServing(ctx, next, 10*time.Second)
				}
				s.closePeerConns()
				pr.stop()
			}
			plan := &joinPlan{Detail: "every member of the spec has a blank disk: bootstrapping a new cluster", New: true, Release: release}
			if s.Restore != nil {
				plan.Detail = "every member of the spec has a blank disk or is restoring: restoring this member from the image's snapshot"
			}
			return plan, nil
		case decideJoin:
			plan, err := s.join(ctx, states)
			if err == nil {
				return plan, nil
			}
			if time.Since(lastSaid) > 10*time.Second {
				logf("join: the cluster exists but cannot take this member yet: %v; retrying", err)
				lastSaid = time.Now()
			}
		default:
			if time.Since(lastSaid) > 10*time.Second {
				var waiting []string
				for _, st := range states {
					if st.State == "blank" {
						continue
					}
					why := st.State
					switch {
					case strings.Contains(st.Detail, "tls:") || strings.Contains(st.Detail, "x509:"):
						why += ", TLS refused: is its certificate from this cluster's CA?"
					case st.State == "unreachable" && st.Detail != "":
						why += ": " + st.Detail
					}
					waiting = append(waiting, fmt.Sprintf("%s (%s)", st.Name, why))
				}
				logf("join: blank data disk; waiting for %s before deciding: a new cluster starts only when every member reports a blank disk", strings.Join(waiting, ", "))
				lastSaid = time.Now()
			}
		}
		// A round already waits up to 2 s for a peer that is not there;
		// between rounds a short pause, so that the last member to come
		// up is seen soon after it answers.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// join makes room for this member in the running cluster: it removes its
// stale entry, adds itself as a learner (or finds itself already added),
// and returns the environment etcd starts `existing` with. The probe
// server stays up until then; etcd takes the peer port after.
func (s *self) join(ctx context.Context, states []peerState) (*joinPlan, error) {
	var eps []string
	for i, st := range states {
		if st.State == "etcd" {
			eps = append(eps, s.Peers[i].ClientURL)
		}
	}
	cli, err := s.client(3*time.Second, eps...)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	list, err := cli.MemberList(cctx)
	if err != nil {
		return nil, fmt.Errorf("member list: %w", err)
	}
	var mine *memberEntry
	for _, m := range list.Members {
		if slices.Contains(m.PeerURLs, s.PeerURL) {
			mine = &memberEntry{ID: m.ID, Name: m.Name, Started: len(m.ClientURLs) > 0, Learner: m.IsLearner}
		}
	}
	detail := ""
	if mine != nil && mine.Started {
		if _, err := cli.MemberRemove(cctx, mine.ID); err != nil && !errors.Is(err, rpctypes.ErrMemberNotFound) {
			return nil, fmt.Errorf("remove the stale member %x: %w", mine.ID, err)
		}
		logf("join: removed this member's stale entry %x (%s): its data is gone", mine.ID, mine.Name)
		detail = fmt.Sprintf("stale member %x removed; ", mine.ID)
		mine = nil
	}
	members := list.Members
	if mine == nil {
		resp, err := cli.MemberAddAsLearner(cctx, []string{s.PeerURL})
		if err != nil {
			return nil, fmt.Errorf("add this member as a learner: %w", err)
		}
		mine = &memberEntry{ID: resp.Member.ID, Learner: true}
		members = resp.Members
		detail += fmt.Sprintf("added as learner %x", mine.ID)
	} else {
		detail += fmt.Sprintf("already added as %x (learner %v)", mine.ID, mine.Learner)
	}
	byURL := map[string]string{s.PeerURL: s.Name}
	for _, p := range s.Peers {
		byURL[p.PeerURL] = p.Name
	}
	var initial []string
	for _, m := range members {
		for _, u := range m.PeerURLs {
			name := m.Name
			if m.ID == mine.ID || name == "" {
				name = byURL[u]
			}
			if name == "" {
				name = fmt.Sprintf("member-%x", m.ID)
			}
			initial = append(initial, name+"="+u)
		}
	}
	sort.Strings(initial)
	plan := &joinPlan{
		Env:    []string{"ETCD_INITIAL_CLUSTER_STATE=existing", "ETCD_INITIAL_CLUSTER=" + strings.Join(initial, ",")},
		Detail: fmt.Sprintf("cluster %x exists: %s", list.Header.ClusterId, detail),
	}
	if mine.Learner {
		plan.Learner = mine.ID
	}
	return plan, nil
}

type memberEntry struct {
	ID      uint64
	Name    string
	Started bool
	Learner bool
}

// promote makes learner id a voter once etcd accepts it (it refuses
// until the learner has caught up with the leader), retrying until it is
// done or ctx ends. It asks the leader itself: a follower forwards a
// promotion to the leader without the caller's identity, which the
// leader refuses under auth ("auth: user name is empty", etcd issue
// 20757; the fix there carries a password token, not a certificate's
// name), and the follower retries that until its request timeout, 7 s
// or more per round that lands on it.
func (s *self) promote(ctx context.Context, id uint64) error {
	var eps []string
	for _, p := range s.Peers {
		eps = append(eps, p.ClientURL)
	}
	eps = append(eps, s.localURL())
	start := time.Now()
	lastSaid := time.Now()
	for {
		err := s.promoteAtLeader(ctx, id, eps)
		if err == nil || errors.Is(err, rpctypes.ErrMemberNotLearner) {
			logf("join: promoted %x from learner to voter after %s", id, time.Since(start).Round(time.Millisecond))
			return nil
		}
		if time.Since(lastSaid) > 15*time.Second {
			logf("join: learner %x not promoted yet: %v; retrying", id, err)
			lastSaid = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("join: learner %x not promoted: %w (last: %v)", id, ctx.Err(), err)
		case <-time.After(time.Second):
		}
	}
}

// promoteAtLeader asks the member that leads, found through eps, to
// promote learner id.
func (s *self) promoteAtLeader(ctx context.Context, id uint64, eps []string) error {
	cli, err := s.client(3*time.Second, eps...)
	if err != nil {
		return err
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var leader uint64
	for _, ep := range eps {
		if st, err := cli.Status(cctx, ep); err == nil && st.Leader != 0 {
			leader = st.Leader
			break
		}
	}
	if leader == 0 {
		return errors.New("no member knows a leader")
	}
	list, err := cli.MemberList(cctx)
	if err != nil {
		return err
	}
	var urls []string
	for _, m := range list.Members {
		if m.ID == leader {
			urls = m.ClientURLs
		}
	}
	if len(urls) == 0 {
		return fmt.Errorf("the leader %x has no client URL in the member list", leader)
	}
	lc, err := s.client(3*time.Second, urls...)
	if err != nil {
		return err
	}
	defer lc.Close()
	_, err = lc.MemberPromote(cctx, id)
	return err
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// recordClusterID waits for etcd to answer locally and writes the
// cluster ID it reports into the data disk's marker.
func (s *self) recordClusterID(ctx context.Context) {
	local := s.localURL()
	for {
		cli, err := s.client(3*time.Second, local)
		if err == nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			r, err := cli.Status(cctx, local)
			cancel()
			cli.Close()
			if err == nil && r.Header.ClusterId != 0 {
				id := fmt.Sprintf("%x", r.Header.ClusterId)
				if err := datadisk.RecordClusterID(id); err != nil {
					logf("marker: %v", err)
				}
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

// joinOnlyWhy says why a member whose image names a cluster formed with
// another membership does not bootstrap, though no peer holds data.
func (s *self) joinOnlyWhy() string {
	return fmt.Sprintf("blank data disk and no member of the spec runs etcd, but this image belongs to cluster %x, formed with another membership than the spec's %s: it only joins that cluster and never bootstraps a new one. If that cluster's data is lost, rebuild it with `etcdimg restore` from a backup", s.WantID, s.InitialCluster)
}

// foreignPeers says why this member must not join, if a peer of the
// spec runs a cluster other than the one this image belongs to: an image
// of a cluster that was since rebuilt (restored with a new token, say)
// never joins the new one, even with a blank disk and the same CA.
func (s *self) foreignPeers(states []peerState) string {
	for _, st := range states {
		if st.ClusterID != 0 && st.ClusterID != s.WantID {
			return fmt.Sprintf("%s runs cluster %x, but this image belongs to cluster %x (token %s): refusing to join another cluster; boot this member from an image of the running cluster (`etcdimg build` in its directory)", st.Name, st.ClusterID, s.WantID, s.Cluster)
		}
	}
	return ""
}

// foreignCluster says why the disk's data must not serve, if a peer runs
// etcd in a cluster whose ID is not want.
func foreignCluster(want string, states []peerState) string {
	for _, st := range states {
		if st.State == "etcd" && st.ClusterID != 0 {
			if got := fmt.Sprintf("%x", st.ClusterID); got != want {
				return fmt.Sprintf("this data disk holds cluster %s, but %s runs cluster %s: the cluster was rebuilt without this disk; etcd stopped, the disk left as it is. Attach a blank disk to rejoin", want, st.Name, got)
			}
		}
	}
	return ""
}

// watchClusterID compares the cluster ID on the data disk with the one
// the peers run, until one answers or a minute has passed.
func (s *self) watchClusterID(ctx context.Context, want string) string {
	defer s.closePeerConns()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		states := s.observeAll(ctx)
		if why := foreignCluster(want, states); why != "" {
			return why
		}
		for _, st := range states {
			if st.State == "etcd" {
				return ""
			}
		}
		select {
		case <-ctx.Done():
			return ""
		case <-time.After(time.Second):
		}
	}
	return ""
}

// ensureAuth turns etcd authentication on once etcd answers here, with
// root and every member of the initial cluster as users with the root
// role (their certificates' CNs), retrying until it is done or ctx ends.
// Every member runs it; they converge.
func (s *self) ensureAuth(ctx context.Context) {
	members := []string{s.Name}
	for _, p := range s.Peers {
		members = append(members, p.Name)
	}
	lastSaid := time.Now()
	for {
		cli, err := s.client(3*time.Second, s.localURL())
		if err == nil {
			cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			var enabled bool
			enabled, err = authz.Ensure(cctx, cli, members)
			cancel()
			cli.Close()
			if err == nil {
				if enabled {
					logf("auth: on; users root and %s (their certificates' CNs) hold the root role, application clients get a role of their own", strings.Join(members, ", "))
				}
				return
			}
		}
		if time.Since(lastSaid) > 30*time.Second {
			logf("auth: not on yet: %v; retrying", err)
			lastSaid = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}
