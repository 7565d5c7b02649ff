package join

import (
	"context"
	"strings"
	"time"

	"etcdimg/internal/authz"
)

// ensureAuth turns etcd authentication on once etcd answers here, with
// root and every member of the initial cluster as users with the root
// role (their certificates' CNs), retrying until it is done or ctx ends.
// Every member runs it; they converge.
func (s *Self) ensureAuth(ctx context.Context) {
	members := []string{s.Name}
	for _, p := range s.Peers {
		members = append(members, p.Name)
	}
	lastSaid := time.Now()
	for {
		cli, err := s.client(3*time.Second, s.localURL())
		if err == nil {
			cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			var enabled bool
			enabled, err = authz.Ensure(cctx, cli, members)
			cancel()
			cli.Close()
			if err == nil {
				if enabled {
					logf("auth: on; users root and %s (their certificates' CNs) hold the root role, application clients get a role of their own", strings.Join(members, ", "))
				}
				return
			}
		}
		if time.Since(lastSaid) > 30*time.Second {
			logf("auth: not on yet: %v; retrying", err)
			lastSaid = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}
