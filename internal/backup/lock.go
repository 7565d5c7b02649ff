package backup

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Lock is the cluster's backup lock (LockKey), held: one backup or one
// member's scheduled defragmentation at a time, cluster-wide.
type Lock struct {
	sess *concurrency.Session
	mu   *concurrency.Mutex
}

// TryLock takes the backup lock on a session of its own (a 30 s lease:
// a member that dies lets go), or returns nil, nil when another holds it.
func TryLock(ctx context.Context, cli *clientv3.Client) (*Lock, error) {
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(30), concurrency.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	mu := concurrency.NewMutex(sess, LockKey)
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = mu.TryLock(lctx)
	cancel()
	if err != nil {
		sess.Close()
		if errors.Is(err, concurrency.ErrLocked) {
			return nil, nil
		}
		return nil, fmt.Errorf("lock: %w", err)
	}
	return &Lock{sess: sess, mu: mu}, nil
}

// Lease is the lock's lease: what else is put on it goes with the lock.
func (l *Lock) Lease() clientv3.LeaseID { return l.sess.Lease() }

// Release lets the lock go and ends its session, revoking its lease.
func (l *Lock) Release() {
	l.mu.Unlock(context.Background())
	l.sess.Close()
}
