package cluster

import (
	"context"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/version"
)

// TestTheVersionGate: etcd moves one minor version at a time, never
// below the cluster's version without its downgrade procedure (which
// only --allow-downgrade runs, one minor down, every image at once), and
// never across a major version; patch releases either way are fine. A
// downgrade the cluster has enabled lets only images at its target
// through.
func TestTheVersionGate(t *testing.T) {
	for _, tc := range []struct {
		name             string
		running, next    string
		cluster, refused string
		allow            bool
		downgrading      string
		downgrade        string // the target of etcd's downgrade to run
	}{
		{name: "the same", running: "3.7.3", next: "3.7.3", cluster: "3.7.0"},
		{name: "a patch up", running: "3.7.3", next: "3.7.4", cluster: "3.7.0"},
		{name: "a patch down", running: "3.7.3", next: "3.7.2", cluster: "3.7.0"},
		{name: "a patch down, allowed: no downgrade", running: "3.7.3", next: "3.7.2", cluster: "3.7.0", allow: true},
		{name: "the next minor", running: "3.7.3", next: "3.8.0", cluster: "3.7.0"},
		{name: "a minor skipped", running: "3.7.3", next: "3.9.0", cluster: "3.7.0", refused: "one minor version at a time; build with etcd 3.8 first"},
		{name: "a minor down", running: "3.7.3", next: "3.6.9", cluster: "3.7.0", refused: "older than the cluster's version 3.7.0: that is etcd's downgrade; run again with --allow-downgrade"},
		{name: "a minor down, allowed", running: "3.7.3", next: "3.6.9", cluster: "3.7.0", allow: true, downgrade: "3.6"},
		{name: "a minor down, allowed, enabled already", running: "3.7.3", next: "3.6.9", cluster: "3.7.0", allow: true, downgrading: "3.6.0", downgrade: "3.6"},
		{name: "a minor down, enabled, not allowed", running: "3.7.3", next: "3.6.9", cluster: "3.7.0", downgrading: "3.6.0", refused: "--allow-downgrade"},
		{name: "two minors down, allowed", running: "3.7.3", next: "3.5.21", cluster: "3.7.0", allow: true, refused: "one minor version at a time; build with etcd 3.6 first, downgrade every member"},
		{name: "the cluster at the target already", running: "3.7.3", next: "3.6.9", cluster: "3.6.0", downgrading: "3.6.0"},
		{name: "a member downgraded already", running: "3.6.9", next: "3.6.9", cluster: "3.6.0", downgrading: "3.6.0"},
		{name: "another target enabled", running: "3.7.3", next: "3.5.21", cluster: "3.6.0", allow: true, downgrading: "3.6.0", refused: "downgrade to 3.6 enabled, and etcd-1's new image runs etcd 3.5.21: cancel the downgrade first with `etcdimg etcdctl -- downgrade cancel`"},
		{name: "back up while one is enabled", running: "3.7.3", next: "3.7.3", cluster: "3.6.0", downgrading: "3.6.0", refused: "downgrade cancel"},
		{name: "a member ahead, back to the cluster's minor", running: "3.8.0", next: "3.7.3", cluster: "3.7.0"},
		{name: "another major", running: "3.7.3", next: "4.0.0", cluster: "3.7.0", refused: "never changes its major version"},
		{name: "another major down, allowed", running: "3.7.3", next: "2.3.8", cluster: "3.7.0", allow: true, refused: "never changes its major version"},
		{name: "a bad version", running: "3.7.3", next: "three", cluster: "3.7.0", refused: "not major.minor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := VersionGate(VersionMove{
				Running: map[string]string{"etcd-1": tc.running}, Next: map[string]string{"etcd-1": tc.next},
				Cluster: tc.cluster, Downgrading: tc.downgrading, AllowDowngrade: tc.allow,
			})
			if (tc.refused == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.refused) {
				t.Fatalf("got %v, want %q", err, tc.refused)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("the refusal is not one line: %q", err)
			}
			if got != tc.downgrade {
				t.Fatalf("downgrade %q, want %q", got, tc.downgrade)
			}
		})
	}
}

// TestADowngradeMovesEveryImage: etcd's downgrade moves the whole
// cluster's version, so images of two minors in one run are refused,
// naming both.
func TestADowngradeMovesEveryImage(t *testing.T) {
	running := map[string]string{"etcd-1": "3.7.3", "etcd-2": "3.7.3", "etcd-3": "3.7.3"}
	_, err := VersionGate(VersionMove{Running: running, Next: map[string]string{"etcd-1": "3.6.9", "etcd-2": "3.7.3", "etcd-3": "3.6.9"}, Cluster: "3.7.0", AllowDowngrade: true})
	if err == nil || !strings.Contains(err.Error(), "etcd-1's new image runs etcd 3.6.9 and etcd-2's 3.7.3") {
		t.Fatalf("mixed minors: %v", err)
	}
	got, err := VersionGate(VersionMove{Running: running, Next: map[string]string{"etcd-1": "3.6.9", "etcd-2": "3.6.8", "etcd-3": "3.6.9"}, Cluster: "3.7.0", AllowDowngrade: true})
	if err != nil || got != "3.6" {
		t.Fatalf("patch releases of one minor: %q, %v", got, err)
	}
}

// TestVersionsAreTheMembersOwn: a real etcd reports the version it runs
// (the one go.mod builds) and the cluster's, which the gate takes.
func TestVersionsAreTheMembersOwn(t *testing.T) {
	_, e := oneMember(t)
	running, cluster, err := e.Versions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if running["etcd-1"] != version.Version || cluster != version.Cluster(version.Version)+".0" {
		t.Fatalf("running %v, cluster %q; want %s and %s.0", running, cluster, version.Version, version.Cluster(version.Version))
	}
	if _, err := VersionGate(VersionMove{Running: running, Next: map[string]string{"etcd-1": version.Version}, Cluster: cluster}); err != nil {
		t.Fatal(err)
	}
}

// TestAMinorUpgradeIsSaid: images of a newer minor than the cluster's are
// named, so that upgrade warns what a late rollback costs.
func TestAMinorUpgradeIsSaid(t *testing.T) {
	for _, tc := range []struct {
		next, cluster, want string
	}{{"3.8.1", "3.7.0", "3.8"}, {"3.7.4", "3.7.0", ""}, {"bad", "3.7.0", ""}} {
		if got := minorUpgrade(map[string]string{"etcd-1": tc.next}, tc.cluster); got != tc.want {
			t.Errorf("%s on %s: %q, want %q", tc.next, tc.cluster, got, tc.want)
		}
	}
}
