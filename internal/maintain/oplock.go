package maintain

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"etcdimg/internal/layout"
)

// Operation is who holds the cluster's operation lock, as the value of
// layout.OperationLockKey says: an operator's replace, roll, rotation or
// upgrade (By user@host, with its PID), or a member's own scheduled
// defragmentation (By the member's name).
type Operation struct {
	Op    string    `json:"op"`
	By    string    `json:"by"`
	PID   int       `json:"pid,omitempty"`
	Since time.Time `json:"since"`
}

// TakeOperationLock puts op on the operation lock's key, on lease, if
// no one holds the lock, in one transaction. When someone does, nothing
// changes and holder is the key's value as it stands (ParseOperation
// reads it).
func TakeOperationLock(ctx context.Context, cli *clientv3.Client, lease clientv3.LeaseID, op Operation) (holder string, err error) {
	v, err := json.Marshal(op)
	if err != nil {
		return "", fmt.Errorf("operation lock: %w", err)
	}
	r, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(layout.OperationLockKey), "=", 0)).
		Then(clientv3.OpPut(layout.OperationLockKey, string(v), clientv3.WithLease(lease))).
		Else(clientv3.OpGet(layout.OperationLockKey)).
		Commit()
	if err != nil {
		return "", fmt.Errorf("operation lock: %w", err)
	}
	if r.Succeeded {
		return "", nil
	}
	if rs := r.Responses; len(rs) == 1 && len(rs[0].GetResponseRange().Kvs) == 1 && len(rs[0].GetResponseRange().Kvs[0].Value) > 0 {
		return string(rs[0].GetResponseRange().Kvs[0].Value), nil
	}
	return "held", nil // an empty value (a foreign writer's), or gone between the compare and the read
}

// OperationHolder is the operation lock key's value, "" when no one holds
// the lock: a plain read, which etcd serves even under NOSPACE.
func OperationHolder(ctx context.Context, cli *clientv3.Client) (string, error) {
	r, err := cli.Get(ctx, layout.OperationLockKey)
	if err != nil {
		return "", fmt.Errorf("read the operation lock: %w", err)
	}
	if len(r.Kvs) == 0 {
		return "", nil
	}
	if len(r.Kvs[0].Value) == 0 {
		return "held", nil // a foreign writer's empty value still holds the key
	}
	return string(r.Kvs[0].Value), nil
}

// ParseOperation reads a holder's value; ok is false when it is not an
// Operation (an older or foreign writer).
func ParseOperation(holder string) (op Operation, ok bool) {
	ok = json.Unmarshal([]byte(holder), &op) == nil && op.Op != ""
	return op, ok
}
