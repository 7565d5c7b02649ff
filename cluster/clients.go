package cluster

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"etcdimg/authz"
)

// withAdmin runs fn with an admin client and a 30-second deadline.
func (e *Etcd) withAdmin(fn func(context.Context, *clientv3.Client) error) error {
	cli, err := e.Client()
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return fn(ctx, cli)
}

// AddClient turns authentication on if it is not (root and every member
// as users with the root role), then makes the client's user and role.
func (e *Etcd) AddClient(members []string, c authz.Client) error {
	return e.withAdmin(func(ctx context.Context, cli *clientv3.Client) error {
		if _, err := authz.Ensure(ctx, cli, members); err != nil {
			return err
		}
		return authz.AddClient(ctx, cli, c)
	})
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
