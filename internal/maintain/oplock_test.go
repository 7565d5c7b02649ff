package maintain

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdimg/internal/etcdtest"
)

// TestOneOperationLockForOperatorsAndMembers: the lock an operator's
// command and a member's scheduled defragmentation both take is one key;
// the second taker gets the first's holder and changes nothing; the lock
// goes with its lease.
func TestOneOperationLockForOperatorsAndMembers(t *testing.T) {
	_, url := etcdtest.Start(t, nil)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if h, err := OperationHolder(ctx, cli); err != nil || h != "" {
		t.Fatalf("a fresh cluster's holder: %q, %v", h, err)
	}
	first, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	since := time.Date(2026, 12, 7, 16, 0, 0, 0, time.UTC)
	if h, err := TakeOperationLock(ctx, cli, first.ID, Operation{Op: "roll", By: "op@host", PID: 42, Since: since}); err != nil || h != "" {
		t.Fatalf("the first take: holder %q, %v", h, err)
	}
	second, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	h, err := TakeOperationLock(ctx, cli, second.ID, Operation{Op: "scheduled defragmentation of etcd-2", By: "etcd-2", Since: since})
	if err != nil {
		t.Fatal(err)
	}
	op, ok := ParseOperation(h)
	if !ok || op.Op != "roll" || op.By != "op@host" || op.PID != 42 || !op.Since.Equal(since) {
		t.Fatalf("the second take got holder %q (%+v)", h, op)
	}
	if r, _ := cli.Get(ctx, "/etcdimg/operation/lock"); len(r.Kvs) != 1 || clientv3.LeaseID(r.Kvs[0].Lease) != first.ID {
		t.Fatalf("the refused take changed the lock: %v", r.Kvs)
	}
	if h2, err := OperationHolder(ctx, cli); err != nil || h2 != h {
		t.Errorf("the holder read: %q, %v; want %q", h2, err, h)
	}
	if _, err := cli.Revoke(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	if h, err := TakeOperationLock(ctx, cli, second.ID, Operation{Op: "scheduled defragmentation of etcd-2", By: "etcd-2", Since: since}); err != nil || h != "" {
		t.Fatalf("a take after the first lease went: holder %q, %v", h, err)
	}
	if h, _ := OperationHolder(ctx, cli); !strings.Contains(h, `"by":"etcd-2"`) || strings.Contains(h, "pid") {
		t.Errorf("a member's holder: %q", h)
	}
	// A key with an empty value, from a foreign writer, still holds the
	// lock.
	if _, err := cli.Put(ctx, "/etcdimg/operation/lock", ""); err != nil {
		t.Fatal(err)
	}
	third, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	if h, err := TakeOperationLock(ctx, cli, third.ID, Operation{Op: "roll"}); err != nil || h == "" {
		t.Errorf("a take over an empty-valued key: holder %q, %v; want refused", h, err)
	}
	if h, err := OperationHolder(ctx, cli); err != nil || h == "" {
		t.Errorf("the holder of an empty-valued key: %q, %v; want held", h, err)
	}
	for _, bad := range []string{"", "held", "{}", `{"by":"x"}`} {
		if _, ok := ParseOperation(bad); ok {
			t.Errorf("ParseOperation(%q) reads an operation", bad)
		}
	}
}
