package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"etcdimg/internal/authz"
)

// adminTimeout bounds one client command on the cluster; reachTimeout
// is how long the members have to answer at all first.
const (
	adminTimeout = 30 * time.Second
	reachTimeout = 5 * time.Second
)

// withAdmin runs fn with an admin client and a 30-second deadline, once
// a member has answered: with none up, it says which endpoints it tried
// rather than a bare deadline from the first call.
func (e *Etcd) withAdmin(fn func(context.Context, *clientv3.Client) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	if err := e.reachable(ctx, reachTimeout); err != nil {
		return err
	}
	cli, err := e.Client()
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	defer cli.Close()
	err = fn(ctx, cli)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("cluster: %w (the members at %s did not finish within %s; check that the cluster is healthy: etcdimg health)", err, strings.Join(e.URLs(), ", "), adminTimeout)
	}
	return err
}

// reachable returns as soon as one endpoint answers a status request, or
// an error naming every endpoint tried once none has within timeout.
func (e *Etcd) reachable(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel() // the other requests end with it
	errs := make(chan error, len(e.Endpoints))
	var wg sync.WaitGroup
	for _, ep := range e.Endpoints {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- e.status(ctx, ep, timeout).Err
		}()
	}
	go func() { wg.Wait(); close(errs) }()
	var first error
	for err := range errs {
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
	}
	if first == nil {
		first = errors.New("no endpoints")
	}
	return fmt.Errorf("cluster: no member answered at %s within %s (%v): the cluster must be up; start it (etcdimg up, or boot the members) and try again", strings.Join(e.URLs(), ", "), timeout, first)
}

// ClientAdded says what AddClient found beside the client it made.
type ClientAdded struct {
	// Overlaps are the existing clients whose prefix overlaps the new
	// one's: each reaches keys of the other.
	Overlaps []authz.Client
	// Pruned are the users of members gone from the spec and the
	// cluster, deleted (their certificates were still root).
	Pruned []string
}

// AddClient turns authentication on if it is not (root and every member
// as users with the root role), deletes the users of removed members,
// then makes the client's user and role.
func (e *Etcd) AddClient(members []string, c authz.Client) (*ClientAdded, error) {
	if err := authz.CheckPrefix(c.Prefix); err != nil {
		return nil, fmt.Errorf("authz: %w", err)
	}
	var added ClientAdded
	err := e.withAdmin(func(ctx context.Context, cli *clientv3.Client) error {
		var err error
		if added.Pruned, err = authz.Prune(ctx, cli, members); err != nil {
			return err
		}
		if _, err := authz.Ensure(ctx, cli, members); err != nil {
			return err
		}
		existing, err := authz.Clients(ctx, cli, members)
		if err != nil {
			return err
		}
		if err := authz.AddClient(ctx, cli, c); err != nil {
			return err
		}
		added.Overlaps = authz.Overlapping(existing, c)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &added, nil
}

// RemoveClient deletes the client's user and role.
func (e *Etcd) RemoveClient(name string) error {
	return e.withAdmin(func(ctx context.Context, cli *clientv3.Client) error {
		return authz.RemoveClient(ctx, cli, name)
	})
}

// Clients lists the application clients and whether authentication is on.
func (e *Etcd) Clients(members []string) (cs []authz.Client, enabled bool, err error) {
	err = e.withAdmin(func(ctx context.Context, cli *clientv3.Client) error {
		st, err := cli.AuthStatus(ctx)
		if err != nil {
			return fmt.Errorf("cluster: auth status: %w", err)
		}
		enabled = st.Enabled
		cs, err = authz.Clients(ctx, cli, members)
		return err
	})
	return cs, enabled, err
}
