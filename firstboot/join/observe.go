package join

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

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
func (s *Self) observe(ctx context.Context, p peer) peerState {
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
func (s *Self) observeAll(ctx context.Context) []peerState { return s.observePeers(ctx, s.Peers) }

// observePeers asks peers, in parallel; the states keep their order.
func (s *Self) observePeers(ctx context.Context, peers []peer) []peerState {
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

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
