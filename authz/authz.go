// Package authz is etcd authentication as etcdimg uses it: on from
// bootstrap, with each client certificate's common name as its user (no
// passwords). The admin certificate (CN root) is etcd's root user. Each
// member's certificate (CN = its name) is a user with the root role,
// because etcd allows membership changes, snapshots and authentication
// changes to root only, and members make those changes themselves (join,
// promotion, the backup service). Every other client gets a user and a
// role of its own, limited to one key prefix. The Kubernetes API server
// is such a client, made by Ensure itself.
//
// The appliance runs Ensure at every start; the host runs it before it
// adds a client. Both only add what is missing, so members racing each
// other converge.
package authz

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"etcdimg/spec"
)

// Root is etcd's root user and role, and the admin certificate's CN.
const Root = "root"

// Ensure makes root and every member a password-less user with the root
// role, then turns authentication on. It reports whether it turned it on.
func Ensure(ctx context.Context, cli *clientv3.Client, members []string) (bool, error) {
	for _, name := range append([]string{Root}, members...) {
		if _, err := cli.UserGet(ctx, name); errors.Is(err, rpctypes.ErrUserNotFound) {
			if _, err := cli.UserAddWithOptions(ctx, name, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
				return false, fmt.Errorf("authz: add user %s: %w", name, err)
			}
		} else if err != nil {
			return false, fmt.Errorf("authz: user %s: %w", name, err)
		}
		if _, err := cli.UserGrantRole(ctx, name, Root); err != nil {
			return false, fmt.Errorf("authz: grant root to %s: %w", name, err)
		}
	}
	if err := grant(ctx, cli, KubeAPIServer); err != nil {
		return false, err
	}
	st, err := cli.AuthStatus(ctx)
	if err != nil {
		return false, fmt.Errorf("authz: status: %w", err)
	}
	if st.Enabled {
		return false, nil
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		return false, fmt.Errorf("authz: enable: %w", err)
	}
	return true, nil
}

// Client is an application client: a user and its role of one name,
// allowed one prefix.
type Client struct {
	Name     string
	Prefix   string
	ReadOnly bool
}

// KubeAPIServer is the Kubernetes API server's client (render writes its
// certificate under kubernetes/): read-write on its storage prefix
// (--etcd-prefix, /registry by default, which holds every object, its
// health key and its leases), nothing else. Its compactor is the one part
// that would reach further: it writes compact_rev_key at the root of the
// key space and then compacts, which etcd allows to root only. So the
// members compact themselves (etcd.autoCompactionRetention) and the API
// server is given --etcd-compaction-interval=0, which starts no compactor
// at all (k8s.io/apiserver/pkg/storage/storagebackend/factory/etcd3.go).
var KubeAPIServer = Client{Name: spec.KubeAPIServerCN, Prefix: "/registry/"}

// prefixEnd is the end of the range of every key that starts with p.
func prefixEnd(p string) string { return clientv3.GetPrefixRangeEnd(p) }

// AddClient makes the user and role name, the role allowed read (and,
// unless readOnly, write) on prefix only. Adding it again with the same
// prefix is a no-op; with another prefix it is refused.
func AddClient(ctx context.Context, cli *clientv3.Client, c Client) error {
	if c.Prefix == "" {
		return errors.New("authz: an empty prefix would allow every key; name the client's prefix")
	}
	if existing, err := getClient(ctx, cli, c.Name); err == nil {
		if existing != c {
			return fmt.Errorf("authz: client %s exists with prefix %q (read-only %v); remove it first to change it", c.Name, existing.Prefix, existing.ReadOnly)
		}
		return nil
	}
	return grant(ctx, cli, c)
}

// grant makes c's role, its permissions, its user and the user's role,
// each only if missing: members running it at once converge.
func grant(ctx context.Context, cli *clientv3.Client, c Client) error {
	perm := clientv3.PermissionType(clientv3.PermReadWrite)
	if c.ReadOnly {
		perm = clientv3.PermissionType(clientv3.PermRead)
	}
	if _, err := cli.RoleAdd(ctx, c.Name); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("authz: add role %s: %w", c.Name, err)
	}
	if _, err := cli.RoleGrantPermission(ctx, c.Name, c.Prefix, prefixEnd(c.Prefix), perm); err != nil {
		return fmt.Errorf("authz: grant %s on %q: %w", c.Name, c.Prefix, err)
	}
	if _, err := cli.UserAddWithOptions(ctx, c.Name, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("authz: add user %s: %w", c.Name, err)
	}
	if _, err := cli.UserGrantRole(ctx, c.Name, c.Name); err != nil {
		return fmt.Errorf("authz: grant role %s to user %s: %w", c.Name, c.Name, err)
	}
	return nil
}

// RemoveClient deletes the client's user and role.
func RemoveClient(ctx context.Context, cli *clientv3.Client, name string) error {
	if _, err := cli.UserDelete(ctx, name); err != nil && !errors.Is(err, rpctypes.ErrUserNotFound) {
		return fmt.Errorf("authz: delete user %s: %w", name, err)
	}
	if _, err := cli.RoleDelete(ctx, name); err != nil && !errors.Is(err, rpctypes.ErrRoleNotFound) {
		return fmt.Errorf("authz: delete role %s: %w", name, err)
	}
	return nil
}

// getClient reads a client's role back.
func getClient(ctx context.Context, cli *clientv3.Client, name string) (Client, error) {
	r, err := cli.RoleGet(ctx, name)
	if err != nil {
		return Client{}, err
	}
	if len(r.Perm) != 1 || string(r.Perm[0].RangeEnd) != prefixEnd(string(r.Perm[0].Key)) {
		return Client{}, fmt.Errorf("authz: role %s has %d permissions, not one prefix", name, len(r.Perm))
	}
	p := r.Perm[0]
	return Client{Name: name, Prefix: string(p.Key), ReadOnly: p.PermType == authpb.READ}, nil
}

// Clients lists the application clients: every user other than root and
// the members, with its role's prefix.
func Clients(ctx context.Context, cli *clientv3.Client, members []string) ([]Client, error) {
	users, err := cli.UserList(ctx)
	if err != nil {
		return nil, fmt.Errorf("authz: list users: %w", err)
	}
	var out []Client
	for _, u := range users.Users {
		if u == Root || slices.Contains(members, u) {
			continue
		}
		c, err := getClient(ctx, cli, u)
		if err != nil {
			c = Client{Name: u, Prefix: "(" + strings.TrimPrefix(err.Error(), "authz: ") + ")"}
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
