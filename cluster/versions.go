package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
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

// VersionGate says why members running etcd running (by name), in a
// cluster at version cluster (major.minor, as etcd reports it), may not
// move to images whose etcd is next (by name), if they may not: etcd
// moves one minor version at a time, and a member never runs an older
// minor than the cluster's version (that is etcd's own downgrade, which
// etcdimg does not run yet). A patch release either way is allowed.
func VersionGate(running, next map[string]string, cluster string) error {
	cv, err := parseVersion(cluster)
	if err != nil {
		return fmt.Errorf("the cluster's version: %w", err)
	}
	for name, n := range next {
		nv, err := parseVersion(n)
		if err != nil {
			return fmt.Errorf("%s's new image: %w", name, err)
		}
		switch {
		case nv.major != cv.major:
			return fmt.Errorf("%s's new image runs etcd %s, the cluster is at %s: etcd never changes its major version in place; restore a snapshot into a new cluster instead", name, n, cluster)
		case nv.minor > cv.minor+1:
			return fmt.Errorf("%s's new image runs etcd %s, the cluster is at %s: etcd moves one minor version at a time; build with etcd %d.%d first, upgrade every member, then this one", name, n, cluster, cv.major, cv.minor+1)
		case nv.minor < cv.minor:
			return fmt.Errorf("%s's new image runs etcd %s, older than the cluster's version %s: a downgrade needs etcd's own downgrade procedure, which etcdimg does not run yet; build with etcd %s.x", name, n, cluster, cv.minorOnly())
		}
		// A member ahead of the cluster's version (a minor upgrade
		// stopped half way) may go back to the cluster's minor: the
		// cluster never moved, and nothing was written in the new
		// format.
	}
	return nil
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
