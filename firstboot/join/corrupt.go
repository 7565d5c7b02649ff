package join

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

	mu       sync.Mutex
	local    hashAt // this member's hash, as etcd's refusal said it
	refused  bool   // etcd refused since the last restart
	peerWait time.Duration
}

// hashAt is a member's hash of its keys at a revision.
type hashAt struct {
	Revision, CompactRevision int64
	Hash                      uint32
}

// NewCorruptionGuard guards this member's etcd.
func (s *Self) NewCorruptionGuard() *CorruptionGuard {
	return &CorruptionGuard{s: s, peerWait: 10 * time.Second}
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
// returns what to add to etcd's environment for the next start, or, when
// this member's data is damaged, why etcd must not start again.
func (g *CorruptionGuard) BeforeRestart(ctx context.Context) (env []string, stop string) {
	g.mu.Lock()
	refused, local := g.refused, g.local
	g.refused = false
	g.mu.Unlock()
	if !refused {
		return nil, ""
	}
	ctx, cancel := context.WithTimeout(ctx, g.peerWait)
	defer cancel()
	peers := g.s.peerHashes(ctx, local.Revision)
	v := judge(g.s.Name, local, peers, len(g.s.Peers)+1)
	switch v.kind {
	case damaged:
		if err := g.s.recordRefusal(v, local); err != nil {
			logf("corruption: %v", err)
		}
		return nil, v.words
	case sound:
		logf("%s", v.words)
		return []string{ign.FeatureGatesVar + "=" + ign.FeatureGates(false)}, ""
	}
	logf("%s", v.words)
	return nil, ""
}

// peerHashes asks every peer for its hash at rev, in parallel, with this
// member's certificate; a peer that does not answer is left out.
func (s *Self) peerHashes(ctx context.Context, rev int64) map[string]hashAt {
	out := map[string]hashAt{}
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
			if err != nil {
				return
			}
			mu.Lock()
			out[p.Name] = hashAt{rev, r.CompactRevision, r.Hash}
			mu.Unlock()
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
func judge(name string, local hashAt, peers map[string]hashAt, size int) verdict {
	quorum := size/2 + 1
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
	return verdict{undecided, against, fmt.Sprintf("corruption: no majority of the cluster's %d agrees at revision %d (this member's side: %s; differing: %s; not compared: %s); trying again with the check", size, local.Revision, strings.Join(mine, ", "), strings.Join(against, ", "), strings.Join(skipped, ", "))}
}

// refusal is what RefusedFile holds.
type refusal struct {
	At       time.Time `json:"at"`
	Revision int64     `json:"revision"`
	Hash     uint32    `json:"hash"`
	Against  []string  `json:"against"`
	Words    string    `json:"words"`
}

// recordRefusal keeps the verdict on the data disk, synced.
func (s *Self) recordRefusal(v verdict, local hashAt) error {
	b, _ := json.MarshalIndent(refusal{time.Now().UTC(), local.Revision, local.Hash, v.against, v.words}, "", "  ")
	tmp := s.RefusedPath + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("keep the verdict: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.RefusedPath)
	}
	if err == nil {
		if d, derr := os.Open(filepath.Dir(s.RefusedPath)); derr == nil {
			err = d.Sync()
			d.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("keep the verdict: %w", err)
	}
	return nil
}

// refusedBefore says why etcd must not start from this disk, if a
// verdict was kept on it.
func (s *Self) refusedBefore() string {
	if s.RefusedPath == "" {
		return ""
	}
	b, err := os.ReadFile(s.RefusedPath)
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	var r refusal
	if err != nil || json.Unmarshal(b, &r) != nil {
		return fmt.Sprintf("%s is unreadable (%v): this disk's data was found damaged before; etcd does not start from it. Heal the member from its peers: etcdimg replace %s", s.RefusedPath, err, s.Name)
	}
	return fmt.Sprintf("this disk's etcd data was found damaged on %s (%s agreed against it at revision %d); etcd does not start from it. Heal the member from its peers: etcdimg replace %s", r.At.Format(time.RFC3339), strings.Join(r.Against, " and "), r.Revision, s.Name)
}
