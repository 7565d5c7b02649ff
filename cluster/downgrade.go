package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"etcdimg/cluster/health"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// downgradeWithin bounds the wait for every member's storage version
// once etcd's downgrade is enabled: the leader moves the cluster's
// version to the target at its next version check (every 4 s in etcd
// 3.7), and each member its storage version at its own next one.
var downgradeWithin = 2 * time.Minute

// Downgrading is the target of etcd's downgrade (major.minor.patch, as
// etcd keeps it) when a member answering reports one enabled, or ""
// when none does. Members in skip (pending: not in the cluster yet) are
// not asked; it is an error when no other member answers.
func (e *Etcd) Downgrading(ctx context.Context, skip []string) (string, error) {
	var why []string
	answered := false
	for _, st := range e.without(skip).Statuses(ctx, 5*time.Second) {
		switch {
		case st.Err != nil:
			why = append(why, fmt.Sprintf("%s: %v", st.Name, st.Err))
		case st.Downgrade != "":
			return st.Downgrade, nil
		default:
			answered = true
		}
	}
	if !answered {
		return "", fmt.Errorf("no member reports whether etcd's downgrade is enabled (%s)", strings.Join(why, "; "))
	}
	return "", nil
}

// Downgrade runs etcd's own downgrade of the cluster to target
// (major.minor, one minor below the cluster's version; VersionGate says
// when): etcd validates it, then enables it, unless it is enabled to
// target already (a run stopped after enabling it), and Downgrade waits,
// within bound, until every member but those in skip keeps its data in
// target's format. etcd moves a member's storage version after the
// cluster's version, which the leader sets to target at once while the
// downgrade is enabled; a member may start target's etcd on its data
// only then (an older etcd refuses a newer storage version). etcd ends
// the downgrade by itself once every member runs target's etcd.
func (e *Etcd) Downgrade(ctx context.Context, target string, skip []string, bound time.Duration, say func(step string, start time.Time)) error {
	start := time.Now()
	want, err := parseVersion(target)
	if err != nil {
		return fmt.Errorf("etcd's downgrade: %w", err)
	}
	enabled, err := e.Downgrading(ctx, skip)
	if err != nil {
		return fmt.Errorf("etcd's downgrade to %s: %w", target, err)
	}
	switch ev, _ := parseVersion(enabled); {
	case enabled == "":
		if err := e.enableDowngrade(ctx, want.minorOnly()); err != nil {
			return err
		}
		say(fmt.Sprintf("etcd: downgrade to %s validated and enabled", want.minorOnly()), start)
	case ev.major == want.major && ev.minor == want.minor:
		say(fmt.Sprintf("etcd: downgrade to %s enabled already (by a run that stopped)", want.minorOnly()), start)
	default:
		return fmt.Errorf("etcd's downgrade to %s: the cluster has one to %s enabled; cancel it first with `etcdimg etcdctl -- downgrade cancel`", want.minorOnly(), ev.minorOnly())
	}
	return e.WaitStorage(ctx, target, skip, bound, say)
}

// WaitStorage waits, within bound, until every member but those in skip
// keeps its data in target's format (major.minor): its storage version.
// A member may start target's etcd on its data only then. It is asked
// on every run while a downgrade is enabled, not only on the run that
// enabled it: the cluster's version moves to the target at once, a
// member's storage version later.
func (e *Etcd) WaitStorage(ctx context.Context, target string, skip []string, bound time.Duration, say func(step string, start time.Time)) error {
	want, err := parseVersion(target)
	if err != nil {
		return fmt.Errorf("etcd's downgrade: %w", err)
	}
	start := time.Now()
	for {
		var behind []string
		for _, st := range e.without(skip).Statuses(ctx, 3*time.Second) {
			switch sv, err := parseVersion(st.StorageVersion); {
			case st.Err != nil:
				behind = append(behind, fmt.Sprintf("%s: %v", st.Name, st.Err))
			case err != nil || sv.major != want.major || sv.minor != want.minor:
				behind = append(behind, fmt.Sprintf("%s's storage version is %q", st.Name, st.StorageVersion))
			}
		}
		if len(behind) == 0 {
			say(fmt.Sprintf("etcd: every member's storage version is %s.0: members may run etcd %s", want.minorOnly(), want.minorOnly()), start)
			return nil
		}
		if time.Since(start) > bound {
			return fmt.Errorf("etcd's downgrade to %s: the members' storage version did not move within %s (%s); it is still enabled: run again to wait once more, or cancel it with `etcdimg etcdctl -- downgrade cancel`", want.minorOnly(), bound, strings.Join(behind, "; "))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd's downgrade to %s: %w", want.minorOnly(), ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// enableDowngrade asks etcd to validate a downgrade to target
// (major.minor), then to enable it.
func (e *Etcd) enableDowngrade(ctx context.Context, target string) error {
	cli, err := e.Client()
	if err != nil {
		return fmt.Errorf("etcd's downgrade to %s: %w", target, err)
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := cli.Downgrade(cctx, clientv3.DowngradeValidate, target); err != nil {
		return fmt.Errorf("etcd's downgrade to %s: validate: %w", target, err)
	}
	if _, err := cli.Downgrade(cctx, clientv3.DowngradeEnable, target); err != nil {
		return fmt.Errorf("etcd's downgrade to %s: enable: %w", target, err)
	}
	return nil
}

// without is e without the members named in skip.
func (e *Etcd) without(skip []string) *Etcd {
	w := *e
	w.Endpoints = slices.DeleteFunc(slices.Clone(e.Endpoints), func(ep health.Endpoint) bool { return slices.Contains(skip, ep.Member) })
	return &w
}
