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
// other converge, and both remove the users of members that left the
// spec and the cluster (Prune), whose certificates would otherwise stay
// root. A client's prefix never reaches etcdimg's own keys
// (ProductPrefix) or the API server's (CheckPrefix).
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

	"etcdimg/internal/layout"
)

// Root is etcd's root user and role, and the admin certificate's CN.
const Root = layout.AdminCN

// Ensure makes root and every member a password-less user with the root
// role, removes the users of members that are gone (Prune), then turns
// authentication on. It reports whether it turned it on. A member whose
// name is an application client's user is refused: granting it root
// would make that client's certificate root.
func Ensure(ctx context.Context, cli *clientv3.Client, members []string) (bool, error) {
	for _, name := range append([]string{Root}, members...) {
		if u, err := cli.UserGet(ctx, name); errors.Is(err, rpctypes.ErrUserNotFound) {
			if _, err := cli.UserAddWithOptions(ctx, name, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
				return false, fmt.Errorf("authz: add user %s: %w", name, err)
			}
		} else if err != nil {
			return false, fmt.Errorf("authz: user %s: %w", name, err)
		} else if other := slices.DeleteFunc(slices.Clone(u.Roles), func(r string) bool { return r == Root }); len(other) > 0 {
			return false, fmt.Errorf("authz: member %s is an application client (its user holds role %s): a member of that name would make the client's certificate root; remove the client (etcdimg client remove %s) or rename the member", name, strings.Join(other, ", "), name)
		}
		if _, err := cli.UserGrantRole(ctx, name, Root); err != nil {
			return false, fmt.Errorf("authz: grant root to %s: %w", name, err)
		}
	}
	if err := grant(ctx, cli, KubeAPIServer); err != nil {
		return false, err
	}
	if _, err := Prune(ctx, cli, members); err != nil {
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

// Prune deletes the users of removed members: a user holding the root
// role that is neither root, nor in members, nor the name of a member the
// cluster lists. Such a user's certificate (a removed member's, valid
// until it expires) would otherwise stay root. The cluster's list covers
// what the caller's does not know: a member added after the caller's
// image was built, during a roll. While a member has not published its
// name yet (a learner still starting), nothing is deleted: it may be one
// the caller does not know. It returns the users it deleted.
func Prune(ctx context.Context, cli *clientv3.Client, members []string) ([]string, error) {
	list, err := cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("authz: member list: %w", err)
	}
	keep := map[string]bool{Root: true}
	for _, m := range members {
		keep[m] = true
	}
	for _, m := range list.Members {
		if m.Name == "" {
			return nil, nil
		}
		keep[m.Name] = true
	}
	users, err := cli.UserList(ctx)
	if err != nil {
		return nil, fmt.Errorf("authz: list users: %w", err)
	}
	var gone []string
	for _, u := range users.Users {
		if keep[u] {
			continue
		}
		r, err := cli.UserGet(ctx, u)
		if errors.Is(err, rpctypes.ErrUserNotFound) {
			continue
		} else if err != nil {
			return gone, fmt.Errorf("authz: user %s: %w", u, err)
		}
		if !slices.Contains(r.Roles, Root) {
			continue // an application client
		}
		if _, err := cli.UserDelete(ctx, u); err != nil && !errors.Is(err, rpctypes.ErrUserNotFound) {
			return gone, fmt.Errorf("authz: delete the removed member's user %s: %w", u, err)
		}
		gone = append(gone, u)
	}
	return gone, nil
}

// ProductPrefix holds etcdimg's own keys: the backup service's lock and
// record (backup.LockKey, backup.RecordKey). No client may reach it.
const ProductPrefix = "/etcdimg/"

// reserved are the prefixes no application client's may equal or
// overlap, with whose keys they are.
var reserved = []struct{ prefix, whose string }{
	{ProductPrefix, "etcdimg's own keys (the backup service's lock and record)"},
	{KubeAPIServer.Prefix, "the Kubernetes API server's keys"},
}

// overlap reports whether two prefixes share keys: one starts with the
// other.
func overlap(a, b string) bool { return strings.HasPrefix(a, b) || strings.HasPrefix(b, a) }

// CheckPrefix says why prefix cannot be an application client's: it must
// start with /, hold no "..", and neither equal nor overlap the
// product's keys (ProductPrefix) or the API server's (/registry/); a
// prefix of / would reach both.
func CheckPrefix(prefix string) error {
	switch {
	case prefix == "":
		return errors.New(`prefix "": an empty prefix would allow every key; name the client's key prefix, starting with /, such as /app/`)
	case !strings.HasPrefix(prefix, "/"):
		return fmt.Errorf("prefix %q: name the client's key prefix starting with /, such as /app/", prefix)
	case strings.Contains(prefix, ".."):
		return fmt.Errorf(`prefix %q holds "..": etcd keys are not paths, so it is not the prefix it looks like; write the prefix plainly, such as /app/`, prefix)
	}
	for _, r := range reserved {
		if overlap(prefix, r.prefix) {
			return fmt.Errorf("prefix %q overlaps %s, %s; pick a prefix outside it, such as /app/", prefix, r.prefix, r.whose)
		}
	}
	return nil
}

// Overlapping lists the clients of existing (other than c itself) whose
// prefix overlaps c's: each reaches keys of the other. It is allowed (a
// read-only auditor of /app/ beside its writer) but worth a warning.
func Overlapping(existing []Client, c Client) []Client {
	var out []Client
	for _, o := range existing {
		if o.Name != c.Name && o.Prefix != "" && overlap(o.Prefix, c.Prefix) {
			out = append(out, o)
		}
	}
	return out
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
var KubeAPIServer = Client{Name: layout.KubeAPIServerCN, Prefix: "/registry/"}

// prefixEnd is the end of the range of every key that starts with p.
func prefixEnd(p string) string { return clientv3.GetPrefixRangeEnd(p) }

// AddClient makes the user and role name, the role allowed read (and,
// unless readOnly, write) on prefix only. Adding it again with the same
// prefix is a no-op; with another prefix it is refused.
//
// The prefix must pass CheckPrefix, and the name may not be a user with
// the root role (root, a member): the client's role would be added to it.
func AddClient(ctx context.Context, cli *clientv3.Client, c Client) error {
	if err := CheckPrefix(c.Prefix); err != nil {
		return fmt.Errorf("authz: %w", err)
	}
	rootUser := fmt.Errorf("authz: client %s: its user holds the root role (root or a member of the cluster); pick another client name", c.Name)
	if c.Name == Root {
		return rootUser
	}
	switch u, err := cli.UserGet(ctx, c.Name); {
	case err == nil && slices.Contains(u.Roles, Root):
		return rootUser
	case err != nil && !errors.Is(err, rpctypes.ErrUserNotFound):
		return fmt.Errorf("authz: user %s: %w", c.Name, err)
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
