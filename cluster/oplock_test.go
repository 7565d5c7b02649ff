package cluster

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestOneOperationAtATime: two operators of one cluster (each with its
// own admin client, as from two copies of the output directory): the
// second is refused, naming the first's operation, user, pid and start;
// once the first releases, the lock is free; and an operator that
// crashed (its keep-alive gone, no release) lets go when its lease
// expires.
func TestOneOperationAtATime(t *testing.T) {
	defer func(ttl int64) { operationLockTTL = ttl }(operationLockTTL)
	operationLockTTL = 3 // etcd's least TTL is a little under 2 s here
	c, dir, reach := builtEtcd(t)
	first, err := Admin(c, dir, reach)
	if err != nil {
		t.Fatal(err)
	}
	second, err := Admin(c, dir, reach)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	lk, err := first.LockOperation(ctx, "roll")
	if err != nil {
		t.Fatal(err)
	}
	_, err = second.LockOperation(ctx, "replace etcd-1")
	if err == nil {
		t.Fatal("a second operation took the lock while the first held it")
	}
	for _, want := range []string{"another operation holds the cluster: roll, by ", "(pid " + strconv.Itoa(os.Getpid()) + ")", "expire within 3s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q lacks %q", err, want)
		}
	}
	lk.Release()
	lk, err = second.LockOperation(ctx, "replace etcd-1")
	if err != nil {
		t.Fatalf("the lock was not free after release: %v", err)
	}

	// A crash: the keep-alive and the client go, the lease is not revoked.
	lk.cancel()
	lk.cli.Close()
	deadline := time.Now().Add(time.Duration(operationLockTTL+15) * time.Second)
	for {
		lk, err = first.LockOperation(ctx, "roll")
		if err == nil {
			lk.Release()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a crashed operator's lock did not expire: %v", err)
		}
		time.Sleep(time.Second)
	}
}

// TestALostLockStopsTheNextMember: Held on a live lock is nil and renews
// it, even after the client gave up its keep-alive; once the lease is
// gone (expired while the cluster did not answer), Held says so and the
// operation stops before its next member.
func TestALostLockStopsTheNextMember(t *testing.T) {
	defer func(ttl int64) { operationLockTTL = ttl }(operationLockTTL)
	operationLockTTL = 3
	c, dir, reach := builtEtcd(t)
	e, err := Admin(c, dir, reach)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	lk, err := e.LockOperation(ctx, "upgrade")
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Release()
	if err := lk.Held(ctx); err != nil {
		t.Fatalf("a live lock: %v", err)
	}
	// Held renews the lease: a keep-alive stopped for longer than the TTL
	// does not lose a lock that Held is asked about in time.
	lk.cancel()
	for range 3 {
		time.Sleep(time.Duration(operationLockTTL) * time.Second / 2)
		if err := lk.Held(ctx); err != nil {
			t.Fatalf("Held, renewing the lease every half TTL: %v", err)
		}
	}
	// The lease gone (expired while the cluster did not answer; here
	// revoked by another client): the lock is lost.
	other, err := e.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Revoke(ctx, lk.lease); err != nil {
		t.Fatal(err)
	}
	if err := lk.Held(ctx); err == nil || !strings.Contains(err.Error(), "lost the cluster's operation lock") {
		t.Errorf("Held after the lease expired: %v", err)
	}
	l := &Lifecycle{Etcd: e, Members: c.Names(), Guard: lk.Held, Driver: &ManualDriver{}}
	err = l.Replace(ctx, c.Members[0].Name, ReplaceOptions{KeepDisk: true, AllowOutage: true})
	if err == nil || !strings.Contains(err.Error(), "lost the cluster's operation lock") {
		t.Errorf("a replace after the lock was lost: %v", err)
	}
}
