package render

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"etcdimg/ignition"
	"etcdimg/ignition/ign"
	"etcdimg/internal/outdir"
	"etcdimg/internal/restore"
	"etcdimg/internal/snapshot"
	"etcdimg/internal/spec"
)

// ClusterRecord is the output directory's cluster-id.json: the cluster
// its images belong to. etcd gives a cluster its ID once, from the token
// and the initial membership of its first bootstrap (or restore); the ID
// never changes after that, while the spec's member list may. So the ID
// is recorded, and once the cluster was seen running with it every
// later render puts the recorded ID, not one computed from the current
// spec, into the images: a blank member of a cluster that grew, shrank
// or moved a member still knows which cluster it may join.
type ClusterRecord struct {
	ClusterID string `json:"clusterID"` // hex, as etcd prints it
	Token     string `json:"token"`
	// InitialCluster is the membership the cluster was formed with.
	InitialCluster string `json:"initialCluster"`
	// Source is SourceSpec (provisional) or SourceLive (seen running,
	// CheckClusterID).
	Source string `json:"source"`
}

// ID is the record's cluster ID as a number.
func (r *ClusterRecord) ID() uint64 {
	id, _ := strconv.ParseUint(r.ClusterID, 16, 64)
	return id
}

// Pending are the names, among members, that were not in the cluster's
// initial membership: added to the spec after the first bootstrap. Ask
// it of a record whose ID is the running cluster's.
func (r *ClusterRecord) Pending(members []string) []string {
	if r == nil {
		return nil
	}
	initial := map[string]bool{}
	for _, m := range strings.Split(r.InitialCluster, ",") {
		name, _, _ := strings.Cut(m, "=")
		initial[name] = true
	}
	var out []string
	for _, n := range members {
		if !initial[n] {
			out = append(out, n)
		}
	}
	return out
}

// LoadClusterRecord reads dir's record, or nil when there is none (a
// directory rendered before etcdimg kept one).
func LoadClusterRecord(dir outdir.Layout) (*ClusterRecord, error) {
	b, err := os.ReadFile(dir.ClusterRecord())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	var r ClusterRecord
	if err := json.Unmarshal(b, &r); err != nil || r.Token == "" || r.ID() == 0 {
		return nil, fmt.Errorf("render: %s is not a cluster record (%v); move it aside and run the command again to record the cluster anew", dir.ClusterRecord(), err)
	}
	return &r, nil
}

// The record's sources.
const (
	// SourceSpec: computed from the spec; provisional, recomputed at
	// every render until the cluster was seen running with that ID.
	SourceSpec = "spec"
	// SourceLive: the ID of the running cluster, seen by up, replace,
	// roll or health with the admin certificate; kept whatever the spec
	// becomes.
	SourceLive = "live"
)

// clusterRecord is the record a render keeps (nil: none, images compute
// the ID from their spec as older ones did):
//   - a record of the cluster seen running is kept while its token is
//     the images' (a restore brings a new token, and a new cluster);
//   - a provisional one is recomputed from the current spec, so that a
//     spec corrected before the first boot gives images that bootstrap;
//   - a new directory gets a new token, the spec's name and a random
//     suffix: two clusters made from one spec (the default one, a
//     template used twice) get different cluster IDs, so that their
//     backups in a shared bucket are told apart by ID;
//   - a directory rendered by an older etcdimg (configs but no record),
//     or one whose record was lost, gets none: the first replace, roll,
//     up or health records the running cluster's ID instead of one a
//     changed spec would give. Its images keep the token its configs
//     already carry (the members' disks are marked with it).
//
// It returns the token the images carry too.
func clusterRecord(c *spec.Cluster, dir outdir.Layout, plan *restore.Plan) (*ClusterRecord, string, error) {
	rec, err := LoadClusterRecord(dir)
	if err != nil {
		return nil, "", err
	}
	var token string
	switch {
	case plan != nil:
		token = plan.Token
	case rec != nil:
		token = rec.Token
	default:
		// No record: a directory with configs (an older etcdimg's, or
		// one whose record was lost) keeps their token and gets none.
		if prior, older := priorToken(c, dir); older {
			return nil, prior, nil
		}
		b := make([]byte, 4)
		if _, err := rand.Read(b); err != nil {
			return nil, "", fmt.Errorf("render: cluster token: %w", err)
		}
		token = c.Name + "-" + hex.EncodeToString(b)
	}
	if rec != nil && rec.Token == token && rec.Source == SourceLive {
		return rec, token, nil
	}
	initial := ignition.InitialCluster(c)
	id, err := snapshot.ClusterID(token, initial)
	if err != nil {
		return nil, "", err
	}
	return &ClusterRecord{ClusterID: strconv.FormatUint(id, 16), Token: token, InitialCluster: initial, Source: SourceSpec}, token, nil
}

// priorToken is the initial-cluster token dir's member configs carry
// (an older etcdimg's: the spec's name; a newer one's, whose record was
// lost: the name and its random part), else the spec's name; older
// reports whether dir holds member configs at all, i.e. whether a
// cluster may already run from them. A token must never change under a
// running cluster: each member's data disk is marked with it, and a
// member refuses a disk of another token.
func priorToken(c *spec.Cluster, dir outdir.Layout) (token string, older bool) {
	configs, _ := filepath.Glob(dir.Ignition("*"))
	sort.Strings(configs)
	for _, p := range configs {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		cfg, err := ign.Parse(raw)
		if err != nil {
			continue
		}
		conf, err := ign.FileContents(cfg, ign.EtcdConfPath)
		if err != nil {
			continue
		}
		if env, err := ign.EnvMap(conf); err == nil && env["ETCD_INITIAL_CLUSTER_TOKEN"] != "" {
			return env["ETCD_INITIAL_CLUSTER_TOKEN"], true
		}
	}
	return c.Name, len(configs) > 0
}

func (r *ClusterRecord) file(dir outdir.Layout) (outdir.File, error) {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return outdir.File{}, err
	}
	rel, _ := dir.Rel(dir.ClusterRecord())
	return outdir.File{Path: rel, Data: append(b, '\n'), Mode: 0o644}, nil
}

// Token is the initial-cluster token dir's images carry: a restored
// cluster's own, else the record's, else the one its configs carry, else
// (a new directory) the spec's name.
func Token(c *spec.Cluster, dir outdir.Layout) (string, error) {
	plan, err := restore.Load(dir)
	if err != nil {
		return "", err
	}
	if plan != nil {
		return plan.Token, nil
	}
	rec, err := LoadClusterRecord(dir)
	if err != nil {
		return "", err
	}
	if rec != nil {
		return rec.Token, nil
	}
	token, _ := priorToken(c, dir)
	return token, nil
}

// CheckClusterID compares the cluster that answers at the spec's
// addresses (live, its ID) with the one dir's images belong to: replace
// and roll before they build an image or power anything off, up and
// health once the cluster answers. A matching record is confirmed (kept
// from then on whatever the spec becomes). A directory without a record
// (rendered by an older etcdimg) adopts the live ID, which the admin
// certificate of this directory's CA just reached; it says so. A record
// that names another cluster is refused.
func CheckClusterID(c *spec.Cluster, dir outdir.Layout, live uint64) (adopted bool, err error) {
	token, err := Token(c, dir)
	if err != nil {
		return false, err
	}
	have, err := LoadClusterRecord(dir)
	if err != nil {
		return false, err
	}
	write := func(rec *ClusterRecord) error {
		f, err := rec.file(dir)
		if err != nil {
			return err
		}
		if _, err := outdir.Write(dir.Dir(), []outdir.File{f}); err != nil {
			return fmt.Errorf("render: record the cluster ID: %w", err)
		}
		return nil
	}
	if have == nil {
		return true, write(&ClusterRecord{ClusterID: strconv.FormatUint(live, 16), Token: token, InitialCluster: ignition.InitialCluster(c), Source: SourceLive})
	}
	if have.Token != token || have.ID() != live {
		return false, fmt.Errorf("the members at the spec's addresses run cluster %x, but the images of %s belong to cluster %x (%s, token %s): refusing before any member goes down, a blank member would never join. If the running cluster is this directory's (its membership changed before etcdimg kept a record), move %s aside and run the command again to adopt it", live, dir.Dir(), have.ID(), dir.ClusterRecord(), have.Token, dir.ClusterRecord())
	}
	if have.Source != SourceLive {
		have.Source = SourceLive
		return false, write(have)
	}
	return false, nil
}
