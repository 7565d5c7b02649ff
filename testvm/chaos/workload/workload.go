// Package workload is the traffic of `etcdimg chaos`: concurrent
// clients, each bound to one member's endpoint, making puts,
// linearizable and serializable gets, compare-and-swap transactions and
// deletes over a small key space, every request recorded as a
// history.Op with its call and return time and its result. A request
// that times out, or fails without saying whether etcd applied it, is
// recorded as of unknown outcome, never as failed: the check then allows
// it to have happened or not.
package workload

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdimg/testvm/chaos/history"
)

// Config is a run's traffic.
type Config struct {
	Endpoints []string // client i talks to Endpoints[i % len]
	TLS       *tls.Config
	Clients   int
	Keys      int    // the key space: Prefix+"k0" … Prefix+"k<Keys-1>"
	Prefix    string // every key is under it, so a run touches nothing else
	Seed      uint64 // the same seed makes the same choices (not the same results)
	Timeout   time.Duration
	Start     time.Time // the origin of the recorded times; zero: when Run begins
}

// Mix is the share of each kind of request, in percent.
var Mix = []struct {
	Kind         history.Kind
	Serializable bool
	Percent      int
}{
	{history.Put, false, 30},
	{history.Get, false, 30},
	{history.Get, true, 10},
	{history.CAS, false, 20},
	{history.Delete, false, 10},
}

// Run drives the clients until ctx ends and returns every request made,
// in no particular order. Its error is only about opening the clients.
func Run(ctx context.Context, cfg Config) ([]history.Op, error) {
	if cfg.Clients < 1 || cfg.Keys < 1 || len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("workload: %d clients, %d keys, %d endpoints: each must be at least 1", cfg.Clients, cfg.Keys, len(cfg.Endpoints))
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	var clis []*clientv3.Client
	defer func() {
		for _, c := range clis {
			c.Close()
		}
	}()
	for i := range cfg.Clients {
		c, err := clientv3.New(clientv3.Config{
			Endpoints: []string{cfg.Endpoints[i%len(cfg.Endpoints)]}, TLS: cfg.TLS,
			DialTimeout: cfg.Timeout, Logger: zap.NewNop(),
		})
		if err != nil {
			return nil, fmt.Errorf("workload: client %d: %w", i, err)
		}
		clis = append(clis, c)
	}
	start := cfg.Start
	if start.IsZero() {
		start = time.Now()
	}
	out := make([][]history.Op, cfg.Clients)
	var wg sync.WaitGroup
	for i, c := range clis {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := client{id: i, cli: c, cfg: cfg, start: start, rnd: rand.New(rand.NewPCG(cfg.Seed, uint64(i))), seen: map[string]int64{}}
			for ctx.Err() == nil {
				op := cl.next(ctx)
				out[i] = append(out[i], op)
				if op.Unknown || op.Failed {
					// A member that is down is asked again soon, not
					// thousands of times a second.
					select {
					case <-ctx.Done():
					case <-time.After(200 * time.Millisecond):
					}
				}
			}
		}()
	}
	wg.Wait()
	var all []history.Op
	for _, ops := range out {
		all = append(all, ops...)
	}
	return all, nil
}

// client is one client's state: what it last saw of each key's
// revision, for its compare-and-swaps.
type client struct {
	id    int
	cli   *clientv3.Client
	cfg   Config
	start time.Time
	rnd   *rand.Rand
	n     int
	seen  map[string]int64
}

// next makes one request and records it.
func (c *client) next(ctx context.Context) history.Op {
	pick := c.rnd.IntN(100)
	m := Mix[len(Mix)-1]
	for _, x := range Mix {
		if pick < x.Percent {
			m = x
			break
		}
		pick -= x.Percent
	}
	op := history.Op{Client: c.id, Kind: m.Kind, Serializable: m.Serializable, Key: fmt.Sprintf("%sk%d", c.cfg.Prefix, c.rnd.IntN(c.cfg.Keys))}
	if op.Kind == history.Put || op.Kind == history.CAS {
		c.n++
		op.Value = fmt.Sprintf("c%d-%d", c.id, c.n)
	}
	if op.Kind == history.CAS {
		op.Expect = c.seen[op.Key]
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.Timeout)
	defer cancel()
	op.Call = time.Since(c.start)
	err := c.do(rctx, &op)
	op.Return = time.Since(c.start)
	if err != nil {
		// A read that failed returned nothing and changed nothing; a
		// write that failed may still have been applied.
		if op.Kind == history.Get {
			op.Failed = true
		} else {
			op.Unknown = true
		}
	}
	return op
}

// do sends op and fills in its result.
func (c *client) do(ctx context.Context, op *history.Op) error {
	switch op.Kind {
	case history.Put:
		r, err := c.cli.Put(ctx, op.Key, op.Value)
		if err != nil {
			return err
		}
		op.ModRev, op.Rev = r.Header.Revision, r.Header.Revision
		c.seen[op.Key] = op.ModRev
	case history.Get:
		var opts []clientv3.OpOption
		if op.Serializable {
			opts = append(opts, clientv3.WithSerializable())
		}
		r, err := c.cli.Get(ctx, op.Key, opts...)
		if err != nil {
			return err
		}
		op.Rev = r.Header.Revision
		if len(r.Kvs) > 0 {
			op.Found, op.Got, op.ModRev = true, string(r.Kvs[0].Value), r.Kvs[0].ModRevision
		}
		if !op.Serializable {
			c.seen[op.Key] = op.ModRev
		}
	case history.Delete:
		r, err := c.cli.Delete(ctx, op.Key)
		if err != nil {
			return err
		}
		op.Succeeded, op.Rev = r.Deleted > 0, r.Header.Revision
		c.seen[op.Key] = 0
	case history.CAS:
		r, err := c.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(op.Key), "=", op.Expect)).Then(clientv3.OpPut(op.Key, op.Value)).Commit()
		if err != nil {
			return err
		}
		op.Succeeded, op.Rev = r.Succeeded, r.Header.Revision
		if r.Succeeded {
			op.ModRev = r.Header.Revision
			c.seen[op.Key] = op.ModRev
		}
	}
	return nil
}
