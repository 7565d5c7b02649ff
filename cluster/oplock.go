package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"etcdimg/internal/layout"
	"etcdimg/internal/maintain"
)

// OperationLockKey holds the cluster's one operation lock: the key of
// whichever operator's replace, roll or rotation is running, on a lease
// that operator keeps alive. A second operator, from any machine and any
// copy of the output directory, is refused; an operator that crashed
// lets go when its lease expires.
const OperationLockKey = layout.OperationLockKey

// operationLockTTL is the lease's TTL, in seconds: how long a crashed
// operator's lock outlives it.
var operationLockTTL int64 = 30

// Operation is who holds the lock, as its key's value says.
type Operation = maintain.Operation

// OperationLock is a held operation lock; Release lets it go.
type OperationLock struct {
	cli    *clientv3.Client
	lease  clientv3.LeaseID
	cancel context.CancelFunc
	kaCtx  context.Context
	mu     sync.Mutex
	kaDead chan struct{} // closed when the running keep-alive ended
}

// LockOperation takes the cluster's operation lock for op (such as
// "roll" or "replace etcd-2"), or says who holds it and since when. The
// lock is kept alive until Release, and held by etcd itself, so it
// binds every operator of the cluster, whatever machine they run on.
func (e *Etcd) LockOperation(ctx context.Context, op string) (*OperationLock, error) {
	if err := e.reachable(ctx, reachTimeout); err != nil {
		return nil, err
	}
	cli, err := e.Client()
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	lease, err := cli.Grant(ctx, operationLockTTL)
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("cluster: operation lock: %w", err)
	}
	holder, err := maintain.TakeOperationLock(ctx, cli, lease.ID, Operation{Op: op, By: operator(), PID: os.Getpid(), Since: time.Now().UTC().Truncate(time.Second)})
	if err != nil || holder != "" {
		cli.Revoke(context.Background(), lease.ID)
		cli.Close()
		if err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		return nil, heldBy(holder)
	}
	kaCtx, stop := context.WithCancel(context.Background())
	ka, err := cli.KeepAlive(kaCtx, lease.ID)
	if err != nil {
		stop()
		cli.Revoke(context.Background(), lease.ID)
		cli.Close()
		return nil, fmt.Errorf("cluster: operation lock: %w", err)
	}
	l := &OperationLock{cli: cli, lease: lease.ID, cancel: stop, kaCtx: kaCtx}
	l.watch(ka)
	return l, nil
}

// watch drains a keep-alive's answers and marks it dead when the client
// gives up on it (no answer within the TTL), so that Held starts another.
func (l *OperationLock) watch(ka <-chan *clientv3.LeaseKeepAliveResponse) {
	dead := make(chan struct{})
	l.mu.Lock()
	l.kaDead = dead
	l.mu.Unlock()
	go func() {
		for range ka {
		}
		close(dead)
	}()
}

// heldBy is the refusal that names the lock's holder.
func heldBy(holder string) error {
	o, ok := maintain.ParseOperation(holder)
	if !ok {
		return errors.New("cluster: another operation holds the cluster's lock; wait for it to finish and try again")
	}
	by := o.By
	if o.PID != 0 {
		by += fmt.Sprintf(" (pid %d)", o.PID)
	}
	return fmt.Errorf("cluster: another operation holds the cluster: %s, by %s since %s; wait for it to finish, or, if it was interrupted, for its lock to expire within %ds, and try again",
		o.Op, by, o.Since.Format(time.RFC3339), operationLockTTL)
}

// operator names this operator as user@host.
func operator() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// Release lets the lock go: its lease is revoked, so the key goes with
// it. A lease the cluster could not be told about expires by itself.
func (l *OperationLock) Release() {
	l.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l.cli.Revoke(ctx, l.lease)
	l.cli.Close()
}

// Held says whether the lock is still this operator's: its key exists on
// this lock's lease. A keep-alive that failed for longer than the TTL
// loses the lock without a word; an operation asks before each member it
// takes down.
func (l *OperationLock) Held(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	resp, err := l.cli.Get(ctx, OperationLockKey)
	if err != nil {
		return fmt.Errorf("cluster: operation lock: %w", err)
	}
	if len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) != l.lease {
		return errors.New("cluster: this operation lost the cluster's operation lock (its lease expired: the cluster was unreachable for longer than its TTL); stopped before the next member; run it again")
	}
	// Still ours: renew it now, and keep it alive again if the client
	// gave the keep-alive up while the cluster did not answer (a member
	// down under --allow-outage, say).
	if _, err := l.cli.KeepAliveOnce(ctx, l.lease); err != nil {
		return fmt.Errorf("cluster: operation lock: renew: %w", err)
	}
	l.mu.Lock()
	dead := l.kaDead
	l.mu.Unlock()
	select {
	case <-dead:
		if l.kaCtx.Err() == nil {
			if ka, err := l.cli.KeepAlive(l.kaCtx, l.lease); err == nil {
				l.watch(ka)
			}
		}
	default:
	}
	return nil
}
