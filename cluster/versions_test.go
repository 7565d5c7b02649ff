package cluster

import (
	"context"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/version"
)

// TestTheVersionGate: etcd moves one minor version at a time, never
// below the cluster's version without its downgrade procedure, and never
// across a major version; patch releases either way are fine.
func TestTheVersionGate(t *testing.T) {
	for _, tc := range []struct {
		name             string
		running, next    string
		cluster, refused string
	}{
		{"the same", "3.7.3", "3.7.3", "3.7.0", ""},
		{"a patch up", "3.7.3", "3.7.4", "3.7.0", ""},
		{"a patch down", "3.7.3", "3.7.2", "3.7.0", ""},
		{"the next minor", "3.7.3", "3.8.0", "3.7.0", ""},
		{"a minor skipped", "3.7.3", "3.9.0", "3.7.0", "one minor version at a time; build with etcd 3.8 first"},
		{"a minor down", "3.7.3", "3.6.9", "3.7.0", "older than the cluster's version 3.7"},
		{"a member ahead, back to the cluster's minor", "3.8.0", "3.7.3", "3.7.0", ""},
		{"another major", "3.7.3", "4.0.0", "3.7.0", "never changes its major version"},
		{"a bad version", "3.7.3", "three", "3.7.0", "not major.minor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := VersionGate(map[string]string{"etcd-1": tc.running}, map[string]string{"etcd-1": tc.next}, tc.cluster)
			if (tc.refused == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.refused) {
				t.Fatalf("got %v, want %q", err, tc.refused)
			}
		})
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
	if err := VersionGate(running, map[string]string{"etcd-1": version.Version}, cluster); err != nil {
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
