package render

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"etcdimg/ignition"
	"etcdimg/outdir"
	"etcdimg/restore"
	"etcdimg/snapshot"
	"etcdimg/spec"
)

// ClusterRecord is the output directory's cluster-id.json: the cluster
// its images belong to. etcd gives a cluster its ID once, from the token
// and the initial membership of its first bootstrap (or restore); the ID
// never changes after that, while the spec's member list may. So the ID
// is recorded at the first render and every later render puts the
// recorded ID, not one computed from the current spec, into the images:
// a blank member of a cluster that grew, shrank or moved a member still
// knows which cluster it may join.
type ClusterRecord struct {
	ClusterID string `json:"clusterID"` // hex, as etcd prints it
	Token     string `json:"token"`
	// InitialCluster is the membership the cluster was formed with.
	InitialCluster string `json:"initialCluster"`
	// Source is "spec" when computed from the spec at the first render,
	// or "live" when taken from the running cluster (AdoptClusterID).
	Source string `json:"source"`
}

// ID is the record's cluster ID as a number.
func (r *ClusterRecord) ID() uint64 {
	id, _ := strconv.ParseUint(r.ClusterID, 16, 64)
	return id
}

// Pending are the names, among members, that were not in the cluster's
// initial membership: added to the spec after the first bootstrap.
func (r *ClusterRecord) Pending(members []string) []string {
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

// clusterRecord is the record a render keeps: dir's own while its token
// is the one the images carry, else (the first render, or a restore with
// its new token) the ID the spec's initial cluster gives with token.
func clusterRecord(c *spec.Cluster, dir outdir.Layout, token string) (*ClusterRecord, error) {
	rec, err := LoadClusterRecord(dir)
	if err != nil {
		return nil, err
	}
	if rec != nil && rec.Token == token {
		return rec, nil
	}
	initial := ignition.InitialCluster(c)
	id, err := snapshot.ClusterID(token, initial)
	if err != nil {
		return nil, err
	}
	return &ClusterRecord{ClusterID: strconv.FormatUint(id, 16), Token: token, InitialCluster: initial, Source: "spec"}, nil
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
// cluster's own, else the spec's name.
func Token(c *spec.Cluster, dir outdir.Layout) (string, error) {
	plan, err := restore.Load(dir)
	if err != nil {
		return "", err
	}
	if plan != nil {
		return plan.Token, nil
	}
	return c.Name, nil
}

// CheckClusterID compares the cluster that answers at the spec's
// addresses (live, its ID) with the one dir's images belong to, before
// replace or roll builds an image or powers anything off. A directory
// without a record (rendered by an older etcdimg) adopts the live ID,
// which the admin certificate of this directory's CA just reached; it
// says so. A record that names another cluster is refused.
func CheckClusterID(c *spec.Cluster, dir outdir.Layout, live uint64) (adopted bool, err error) {
	token, err := Token(c, dir)
	if err != nil {
		return false, err
	}
	have, err := LoadClusterRecord(dir)
	if err != nil {
		return false, err
	}
	if have == nil {
		rec := &ClusterRecord{ClusterID: strconv.FormatUint(live, 16), Token: token, InitialCluster: ignition.InitialCluster(c), Source: "live"}
		f, err := rec.file(dir)
		if err != nil {
			return false, err
		}
		if _, err := outdir.Write(dir.Dir(), []outdir.File{f}); err != nil {
			return false, fmt.Errorf("render: record the cluster ID: %w", err)
		}
		return true, nil
	}
	want, err := clusterRecord(c, dir, token)
	if err != nil {
		return false, err
	}
	if want.ID() != live {
		return false, fmt.Errorf("the members at the spec's addresses run cluster %x, but the images of %s belong to cluster %x (%s): refusing before any member goes down, a blank member would never join. If the running cluster is this directory's (its membership changed before etcdimg kept a record), move %s aside and run the command again to adopt it", live, dir.Dir(), want.ID(), dir.ClusterRecord(), dir.ClusterRecord())
	}
	return false, nil
}
