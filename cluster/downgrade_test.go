package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/version"
	clientv3 "go.etcd.io/etcd/client/v3"

	"etcdimg/cluster/health"
	"etcdimg/internal/etcdtest"
)

// TestUpgradeRunsEtcdsDowngrade, against a real etcd (the one go.mod
// builds, 3.7): images one minor below the cluster's version are refused
// without --allow-downgrade, changing nothing, and two minors below even
// with it; with it, before any member would go down, etcd validates and
// enables its downgrade, and the cluster's version and the member's
// storage version move to the target. A rerun finds the downgrade
// enabled and goes on without enabling it again; images of another minor
// are then refused, naming the cancel, and go through once it is
// cancelled.
func TestUpgradeRunsEtcdsDowngrade(t *testing.T) {
	_, e := oneMember(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var said []string
	say := func(step string, _ time.Duration) { said = append(said, step) }
	l := &Lifecycle{Etcd: e, Members: []string{"etcd-1"}, Say: say}
	order := []string{"etcd-1"}
	cur, err := parseVersion(version.Version)
	if err != nil {
		t.Fatal(err)
	}
	below := fmt.Sprintf("%d.%d", cur.major, cur.minor-1)
	imageOf := func(etcd string) map[string]string {
		p, _ := testImageOf(t, newSlot, etcd, etcd)
		return map[string]string{"etcd-1": p}
	}
	down, same, twoDown := imageOf(below+".9"), imageOf(version.Version), imageOf(fmt.Sprintf("%d.%d.1", cur.major, cur.minor-2))
	saidThat := func(part string) bool {
		for _, s := range said {
			if strings.Contains(s, part) {
				return true
			}
		}
		return false
	}

	_, err = l.checkVersions(ctx, down, order, false)
	if err == nil || !strings.Contains(err.Error(), "--allow-downgrade") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("not asked: %v", err)
	}
	if _, err := l.checkVersions(ctx, twoDown, order, true); err == nil || !strings.Contains(err.Error(), "one minor version at a time") {
		t.Fatalf("two minors down: %v", err)
	}
	if d, err := e.Downgrading(ctx, nil); err != nil || d != "" {
		t.Fatalf("a refusal enabled a downgrade: %q, %v", d, err)
	}

	start := time.Now()
	if _, err := l.checkVersions(ctx, down, order, true); err != nil {
		t.Fatalf("asked: %v", err)
	}
	t.Logf("validate, enable and the wait took %s: %q", time.Since(start).Round(time.Millisecond), said)
	if !saidThat("downgrade to " + below + " validated and enabled") {
		t.Errorf("not said: %q", said)
	}
	st := e.Statuses(ctx, 5*time.Second)[0]
	if st.Err != nil || st.StorageVersion != below+".0" || st.Downgrade != below+".0" {
		t.Fatalf("after the downgrade: storage version %q, downgrade %q, %v; want %s.0 both", st.StorageVersion, st.Downgrade, st.Err, below)
	}
	if running, cluster, err := e.Versions(ctx); err != nil || cluster != below+".0" || running["etcd-1"] != version.Version {
		t.Fatalf("/version after the downgrade: %v, cluster %q, %v", running, cluster, err)
	}

	// Run again (a run stopped after the downgrade): the cluster is at
	// the target, enabled; nothing is enabled again.
	said = nil
	if _, err := l.checkVersions(ctx, down, order, true); err != nil {
		t.Fatalf("again: %v", err)
	}
	if saidThat("validated and enabled") || !saidThat("downgrade to "+below+".0 enabled") {
		t.Errorf("again: %q", said)
	}
	// Stopped between the enable and the wait: Downgrade finds it
	// enabled to its target and only waits.
	said = nil
	if err := e.Downgrade(ctx, below, nil, 10*time.Second, l.say); err != nil || !saidThat("enabled already") || saidThat("validated") {
		t.Fatalf("Downgrade again: %v, %q", err, said)
	}

	// Another minor while it is enabled: refused, saying how to cancel.
	for name, images := range map[string]map[string]string{"further down": twoDown, "back up": same} {
		if _, err := l.checkVersions(ctx, images, order, true); err == nil || !strings.Contains(err.Error(), "`etcdimg etcdctl -- downgrade cancel`") {
			t.Errorf("%s while a downgrade is enabled: %v", name, err)
		}
	}
	if err := e.Downgrade(ctx, fmt.Sprintf("%d.%d", cur.major, cur.minor-2), nil, 10*time.Second, l.say); err == nil || !strings.Contains(err.Error(), "has one to "+below+" enabled") {
		t.Errorf("Downgrade to another target: %v", err)
	}
	cli, err := e.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Downgrade(ctx, clientv3.DowngradeCancel, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := l.checkVersions(ctx, same, order, false); err != nil {
		t.Fatalf("back up once cancelled: %v", err)
	}
}

// TestTheDowngradeWaitIsBounded: a member that does not answer keeps
// the wait from ending; it stops at its bound naming the member, leaving
// the downgrade enabled for a rerun, which does not wait for members that
// are not in the cluster yet (pending), and at once when its context
// ends.
func TestTheDowngradeWaitIsBounded(t *testing.T) {
	_, e := oneMember(t)
	e.Endpoints = append(e.Endpoints, health.Endpoint{Member: "etcd-2", URL: "http://" + etcdtest.FreeURL(t, "http").Host})
	cur, _ := parseVersion(version.Version)
	below := fmt.Sprintf("%d.%d", cur.major, cur.minor-1)
	ctx := context.Background()
	quiet := func(string, time.Time) {}
	start := time.Now()
	err := e.Downgrade(ctx, below, nil, time.Second, quiet)
	if err == nil || !strings.Contains(err.Error(), "did not move within 1s (") || !strings.Contains(err.Error(), "etcd-2: ") || !strings.Contains(err.Error(), "still enabled") {
		t.Fatalf("a member down: %v", err)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("the 1 s wait took %s", took)
	}
	if d, err := e.Downgrading(ctx, []string{"etcd-2"}); err != nil || d != below+".0" {
		t.Fatalf("after the bound: %q, %v", d, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(2*time.Second, cancel)
	if err := e.Downgrade(cctx, below, nil, time.Minute, quiet); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	// A rerun after the bound: the cluster's version is the target by
	// now, and the images are of it, but etcd-2's storage version is
	// still unknown. The rerun waits for it too (once it went on).
	for {
		if _, cv, err := e.Versions(ctx); err == nil && cv == below+".0" {
			break
		}
		time.Sleep(time.Second)
	}
	defer func(d time.Duration) { downgradeWithin = d }(downgradeWithin)
	downgradeWithin = time.Second
	img, _ := testImageOf(t, newSlot, "down", below+".9")
	l := &Lifecycle{Etcd: e, Members: []string{"etcd-1", "etcd-2"}, Say: func(string, time.Duration) {}}
	if d, err := l.checkVersions(ctx, map[string]string{"etcd-1": img}, []string{"etcd-1"}, true); err == nil || !strings.Contains(err.Error(), "etcd-2: ") || d != below+".0" {
		t.Fatalf("a rerun with etcd-2's storage version unknown: %q, %v", d, err)
	}
	if err := e.Downgrade(ctx, below, []string{"etcd-2"}, time.Minute, quiet); err != nil {
		t.Fatalf("etcd-2 pending: %v", err)
	}
}
