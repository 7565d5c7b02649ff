package join

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"etcdimg/firstboot/internal/console"
	"etcdimg/internal/layout"
)

// probePath is where a blank, deciding member answers its peers.
const probePath = "/etcdimg/v1/disk"

// probeReply is a deciding member's answer.
type probeReply struct {
	Cluster string `json:"cluster"`
	Member  string `json:"member"`
	Disk    string `json:"disk"` // "blank", or "starting" once it decided to start the new cluster
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

func (p *probe) set(s *Self, disk string) {
	b, _ := json.Marshal(probeReply{Cluster: s.Cluster, Member: s.Name, Disk: disk})
	p.reply.Store(b)
	p.starting.Store(disk == "starting")
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

// serveProbe answers peers that this member is blank and deciding, on
// its peer address, until its stop is called.
func (s *Self) serveProbe() (*probe, error) {
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
	console.Go("join probe", func() {
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
