package join

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"etcdimg/ignition/ign"
)

// etcd's words, in the log lines of its initial corruption check
// (etcdserver/corrupt.go of the etcd built from go.mod).
const (
	etcdHashDiffers  = "found different hash values from remote peer"
	etcdInconsistent = "found data inconsistency with peers"
)

// CorruptionGuard decides, when etcd's initial corruption check refuses
// this member, which side is damaged. etcd's rule is "any answering peer
// differs", so a healthy member is refused too when a damaged peer
// serves; the guard asks every peer for its hash at the same revision and
// counts. A majority of the cluster against this member: its data is
// damaged, the verdict is kept on its disk, and etcd never starts from
// that disk again (a refused member would otherwise start serving once
// its peers compact past the revision compared). This member on a
// majority's side: etcd starts again without the initial check, and the
// leader's compaction check names the member that differs. No majority
// either way: etcd starts again with the check.
type CorruptionGuard struct {
	s *Self

	mu      sync.Mutex
	local   hashAt // this member's hash, as etcd's refusal said it
	refused bool   // etcd refused since the last restart
	// peerWait bounds one round of questions to the peers; retry is the
	// first wait between rounds while no majority decides (it doubles,
	// up to a minute).
	peerWait, retry time.Duration
}

// hashAt is a member's hash of its keys at a revision.
type hashAt struct {
	Revision, CompactRevision int64
	Hash                      uint32
}

// NewCorruptionGuard guards this member's etcd.
func (s *Self) NewCorruptionGuard() *CorruptionGuard {
	return &CorruptionGuard{s: s, peerWait: 10 * time.Second, retry: 5 * time.Second}
}

// Line reads one line of etcd's output, and has words for the console
// when etcd refused to start.
func (g *CorruptionGuard) Line(line string) string {
	switch {
	case strings.Contains(line, etcdHashDiffers):
		var l struct {
			Rev     int64  `json:"local-member-revision"`
			Compact int64  `json:"local-member-compact-revision"`
			Hash    uint32 `json:"local-member-hash"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Rev > 0 {
			g.mu.Lock()
			g.local = hashAt{l.Rev, l.Compact, l.Hash}
			g.mu.Unlock()
		}
	case strings.Contains(line, etcdInconsistent):
		g.mu.Lock()
		g.refused = true
		rev := g.local.Revision
		g.mu.Unlock()
		return fmt.Sprintf("corruption: etcd refused to start: this member's data differs from a peer's at revision %d (etcd's initial corruption check); asking every peer which side a majority of the cluster is on", rev)
	}
	return ""
}

// BeforeRestart runs after etcd exited, before it is started again. It
// returns what to add to etcd's environment for the next start, or why
// etcd must not start again. After a refusal it judges until a majority
// decides, however long that takes, with etcd down meanwhile: started
// again with the check, a damaged member would pass it as soon as its
// peers compact past the compared revision (etcd skips a peer at another
// compact revision), and serve.
func (g *CorruptionGuard) BeforeRestart(ctx context.Context) (env []string, stop string) {
	g.mu.Lock()
	refused, local := g.refused, g.local
	g.refused = false
	g.mu.Unlock()
	if !refused {
		return nil, ""
	}
	wait := g.retry
	said := ""
	for {
		qctx, cancel := context.WithTimeout(ctx, g.peerWait)
		peers := g.s.peerHashes(qctx, local.Revision)
		cancel()
		v := judge(g.s.Name, local, peers, g.s.Peers)
		switch v.kind {
		case damaged:
			if g.s.KeepVerdict == nil {
				logf("corruption: the verdict is not kept: no data disk to keep it on")
			} else if err := g.s.KeepVerdict(v.words); err != nil {
				logf("corruption: %v", err)
			}
			return nil, v.words
		case sound:
			logf("%s", v.words)
			return []string{ign.FeatureGatesVar + "=" + ign.FeatureGates(false)}, ""
		}
		if v.words != said {
			logf("%s", v.words)
			said = v.words
		}
		select {
		case <-ctx.Done():
			return nil, "shutting down before a majority decided"
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Minute)
	}
}

// peerHashes asks every peer for its hash at rev, in parallel, with this
// member's certificate. A peer that does not answer is left out, and so
// is an answer from another cluster, or from a member that already
// answered under another name (an address the spec gives twice).
func (s *Self) peerHashes(ctx context.Context, rev int64) map[string]hashAt {
	out := map[string]hashAt{}
	ids := map[uint64]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range s.Peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cli, err := s.client(3*time.Second, p.ClientURL)
			if err != nil {
				return
			}
			defer cli.Close()
			r, err := cli.HashKV(ctx, p.ClientURL, rev)
			if err != nil || r.Header == nil || (s.WantID != 0 && r.Header.ClusterId != s.WantID) {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if ids[r.Header.MemberId] {
				return
			}
			ids[r.Header.MemberId] = true
			out[p.Name] = hashAt{rev, r.CompactRevision, r.Hash}
		}()
	}
	wg.Wait()
	return out
}

type verdictKind int

const (
	undecided verdictKind = iota
	damaged               // a majority of the cluster agrees against this member
	sound                 // this member is on a majority's side
)

type verdict struct {
	kind    verdictKind
	against []string // the members whose hash differs from this one's
	words   string
}

// judge counts, among the members that answered with the same compact
// revision as this one, who agrees with whom at the revision, against
// the quorum of a cluster of size members.
func judge(name string, local hashAt, peers map[string]hashAt, spec []ign.Peer) verdict {
	size := len(spec) + 1
	quorum := size/2 + 1
	var silent []string
	for _, p := range spec {
		if _, ok := peers[p.Name]; !ok {
			silent = append(silent, p.Name)
		}
	}
	groups := map[uint32][]string{local.Hash: {name}}
	var skipped []string
	for n, h := range peers {
		if h.CompactRevision != local.CompactRevision {
			skipped = append(skipped, n)
			continue
		}
		groups[h.Hash] = append(groups[h.Hash], n)
	}
	var against []string
	for h, ns := range groups {
		if h != local.Hash {
			against = append(against, ns...)
		}
	}
	sort.Strings(against)
	mine := groups[local.Hash]
	sort.Strings(mine)
	for h, ns := range groups {
		if h != local.Hash && len(ns) >= quorum {
			sort.Strings(ns)
			return verdict{damaged, ns, fmt.Sprintf("corruption: %s agree against this member at revision %d, a majority of the cluster's %d: its data is damaged. It will not serve from this disk, now or at any later boot (the verdict is kept on the disk). Heal it from its peers: etcdimg replace %s", strings.Join(ns, " and "), local.Revision, size, name)}
		}
	}
	if len(mine) >= quorum {
		return verdict{sound, against, fmt.Sprintf("corruption: this member agrees with %s at revision %d, a majority of the cluster's %d; %s differs: starting without the initial check (the leader's compaction hash check raises CORRUPT for what differs)", strings.Join(mine[1:], " and "), local.Revision, size, strings.Join(against, " and "))}
	}
	sort.Strings(skipped)
	return verdict{undecided, against, fmt.Sprintf("corruption: no majority of the cluster's %d agrees at revision %d (this member's side: %s; differing: %s; at another compaction: %s; not answering: %s); etcd stays down, asking again", size, local.Revision, strings.Join(mine, ", "), list(against), list(skipped), list(silent))}
}

func list(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}
