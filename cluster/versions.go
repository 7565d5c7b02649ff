package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// etcdVersion is a major.minor.patch etcd version.
type etcdVersion struct{ major, minor, patch int }

func parseVersion(s string) (etcdVersion, error) {
	parts := strings.SplitN(strings.TrimPrefix(s, "v"), ".", 3)
	var v etcdVersion
	var err error
	for i, p := range []*int{&v.major, &v.minor, &v.patch} {
		if i >= len(parts) {
			if i == 2 {
				break // a cluster version is major.minor
			}
			return v, fmt.Errorf("etcd version %q is not major.minor[.patch]", s)
		}
		num, _, _ := strings.Cut(parts[i], "-")
		if *p, err = strconv.Atoi(num); err != nil {
			return v, fmt.Errorf("etcd version %q is not major.minor[.patch]", s)
		}
	}
	return v, nil
}

func (v etcdVersion) minorOnly() string { return fmt.Sprintf("%d.%d", v.major, v.minor) }

// VersionMove is what VersionGate decides from.
type VersionMove struct {
	// Running and Next are the etcd each member runs and its new image
	// runs, by name.
	Running, Next map[string]string
	// Cluster is the cluster's version (major.minor[.patch], as etcd
	// reports it).
	Cluster string
	// Downgrading is the target (major.minor[.patch]) of etcd's
	// downgrade when the cluster has one enabled, else "".
	Downgrading string
	// AllowDowngrade lets images one minor below the cluster's version
	// through, once etcd's own downgrade has run (upgrade's
	// --allow-downgrade).
	AllowDowngrade bool
}

// VersionGate says why the members may not move to their new images'
// etcd, if they may not: etcd moves one minor version at a time, and a
// member never runs an older minor than the cluster's version unless
// etcd's own downgrade moved the cluster's version down first, which
// only m.AllowDowngrade asks for, to one minor below, every image at
// once. A patch release either way is allowed. When the move needs
// etcd's downgrade, downgrade is its target (major.minor).
//
// A downgrade the cluster has enabled holds its version at the target
// until every member runs it (etcd then ends the downgrade by itself):
// while one is enabled, only images at its target go through.
func VersionGate(m VersionMove) (downgrade string, err error) {
	cv, err := parseVersion(m.Cluster)
	if err != nil {
		return "", fmt.Errorf("the cluster's version: %w", err)
	}
	names := slices.Sorted(maps.Keys(m.Next))
	var down, same []string // members whose image is below, at or above the cluster's minor
	for _, name := range names {
		n := m.Next[name]
		nv, err := parseVersion(n)
		if err != nil {
			return "", fmt.Errorf("%s's new image: %w", name, err)
		}
		switch {
		case nv.major != cv.major:
			return "", fmt.Errorf("%s's new image runs etcd %s, the cluster is at %s: etcd never changes its major version in place; restore a snapshot into a new cluster instead", name, n, m.Cluster)
		case nv.minor > cv.minor+1:
			return "", fmt.Errorf("%s's new image runs etcd %s, the cluster is at %s: etcd moves one minor version at a time; build with etcd %d.%d first, upgrade every member, then this one", name, n, m.Cluster, cv.major, cv.minor+1)
		case nv.minor < cv.minor-1:
			return "", fmt.Errorf("%s's new image runs etcd %s, the cluster is at %s: etcd's downgrade goes one minor version at a time; build with etcd %d.%d first, downgrade every member, then this one", name, n, m.Cluster, cv.major, cv.minor-1)
		case nv.minor == cv.minor-1:
			if !m.AllowDowngrade {
				return "", fmt.Errorf("%s's new image runs etcd %s, older than the cluster's version %s: that is etcd's downgrade; run again with --allow-downgrade to have etcd downgrade the cluster to %d.%d first, or build with etcd %s.x", name, n, m.Cluster, nv.major, nv.minor, cv.minorOnly())
			}
			down = append(down, name)
		default:
			// A member ahead of the cluster's version (a minor upgrade
			// stopped half way) may go back to the cluster's minor: the
			// cluster never moved, and nothing was written in the new
			// format.
			same = append(same, name)
		}
	}
	if len(down) > 0 && len(same) > 0 {
		return "", fmt.Errorf("%s's new image runs etcd %s and %s's %s: etcd's downgrade moves the whole cluster; build every image with one etcd", down[0], m.Next[down[0]], same[0], m.Next[same[0]])
	}
	if len(down) > 0 {
		downgrade = fmt.Sprintf("%d.%d", cv.major, cv.minor-1)
	}
	if m.Downgrading != "" {
		dv, err := parseVersion(m.Downgrading)
		if err != nil {
			return "", fmt.Errorf("the cluster's downgrade: %w", err)
		}
		for _, name := range names {
			if nv, _ := parseVersion(m.Next[name]); nv.major != dv.major || nv.minor != dv.minor {
				return "", fmt.Errorf("the cluster has etcd's downgrade to %s enabled, and %s's new image runs etcd %s: cancel the downgrade first with `etcdimg etcdctl -- downgrade cancel`, or build with etcd %s.x", dv.minorOnly(), name, m.Next[name], dv.minorOnly())
			}
		}
	}
	return downgrade, nil
}

// less orders versions by major, then minor.
func (v etcdVersion) less(w etcdVersion) bool {
	return v.major < w.major || v.major == w.major && v.minor < w.minor
}

// Versions asks every member for the etcd it runs (its /version), and
// returns them by name with the cluster's version (the lowest minor
// every member runs, which etcd moves only once every member runs the
// new one).
//
// A cluster that has just started says "not_decided" until its leader
// publishes the version; Versions asks again for up to 20 s.
func (e *Etcd) Versions(ctx context.Context) (map[string]string, string, error) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		running, cluster, err := e.versions(ctx)
		if err == nil || time.Now().After(deadline) {
			return running, cluster, err
		}
		select {
		case <-ctx.Done():
			return nil, "", ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func (e *Etcd) versions(ctx context.Context) (map[string]string, string, error) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: e.TLS}}
	running := map[string]string{}
	cluster := ""
	var why []string
	for _, ep := range e.Endpoints {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, ep.URL+"/version", nil)
		if err != nil {
			return nil, "", err
		}
		resp, err := hc.Do(req)
		if err != nil {
			// A member down: Replace's own check refuses what needs it.
			why = append(why, fmt.Sprintf("%s: %v", ep.Member, err))
			continue
		}
		var v struct {
			Server  string `json:"etcdserver"`
			Cluster string `json:"etcdcluster"`
		}
		err = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		if err != nil {
			why = append(why, fmt.Sprintf("%s: /version: %v", ep.Member, err))
			continue
		}
		running[ep.Member] = v.Server
		cv, err := parseVersion(v.Cluster)
		if err != nil {
			why = append(why, fmt.Sprintf("%s: cluster version %q", ep.Member, v.Cluster))
			continue
		}
		if lo, err := parseVersion(cluster); err != nil || cv.less(lo) {
			cluster = v.Cluster
		}
	}
	if cluster == "" {
		return running, "", fmt.Errorf("no member reports the cluster's etcd version (%s)", strings.Join(why, "; "))
	}
	return running, cluster, nil
}
