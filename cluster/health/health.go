// Package health checks etcd members over mTLS the way `etcdctl endpoint
// health` does, and prints the runbook's table: ENDPOINT, HEALTH, TOOK,
// ERROR.
package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/olekukonko/tablewriter"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Endpoint is one member's client URL.
type Endpoint struct {
	Member string
	URL    string
}

// Result is one member's health.
type Result struct {
	Endpoint
	Healthy bool
	Took    time.Duration
	Err     string
	// Alarms are the cluster's active alarms as this member listed them
	// (NOSPACE, CORRUPT): etcd keeps them for the whole cluster, so every
	// member that answers lists the same ones.
	Alarms []string
}

// TLS loads the client certificate, key and CA.
func TLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg, err := transport.TLSInfo{TrustedCAFile: caFile, CertFile: certFile, KeyFile: keyFile}.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("health: %w", err)
	}
	return cfg, nil
}

// Check asks every endpoint, in parallel, for a linearizable read of the
// key "health", as etcdctl does: healthy when it answers (permission
// denied counts as an answer) and reports no alarm. Results keep the
// order of eps.
func Check(ctx context.Context, eps []Endpoint, tc *tls.Config, timeout time.Duration) []Result {
	return each(eps, func(ep Endpoint) Result { return check(ctx, ep, tc, timeout) })
}

// each runs fn for every endpoint in parallel; results keep eps' order.
func each(eps []Endpoint, fn func(Endpoint) Result) []Result {
	out := make([]Result, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = fn(ep)
		}()
	}
	wg.Wait()
	return out
}

// quickReconnect retries a refused connection within 100-500 ms instead
// of gRPC's 1 s and more: a member that is still starting refuses, and a
// check that waited out gRPC's backoff saw it serving a second late.
var quickReconnect = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
	MinConnectTimeout: time.Second,
}

func check(ctx context.Context, ep Endpoint, tc *tls.Config, timeout time.Duration) Result {
	r := Result{Endpoint: ep}
	start := time.Now()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{ep.URL}, TLS: tc, DialTimeout: timeout, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(quickReconnect)},
	})
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err = cli.Get(cctx, "health")
	if err == nil || errors.Is(err, rpctypes.ErrPermissionDenied) {
		alarms, aerr := cli.AlarmList(cctx)
		switch {
		case aerr != nil && !errors.Is(aerr, rpctypes.ErrPermissionDenied):
			err = aerr
		case aerr == nil && len(alarms.Alarms) > 0:
			var names []string
			for _, a := range alarms.Alarms {
				names = append(names, a.Alarm.String())
			}
			r.Alarms = names
			err = fmt.Errorf("active alarm(s): %s", strings.Join(names, ", "))
		default:
			err = nil
		}
	}
	r.Took = time.Since(start)
	if err != nil {
		r.Err = oneLine(err)
		return r
	}
	r.Healthy = true
	return r
}

func oneLine(err error) string {
	s := err.Error()
	if errors.Is(err, context.DeadlineExceeded) {
		s = "no answer (context deadline exceeded)"
	}
	return strings.Join(strings.Fields(s), " ")
}

// Wait checks each endpoint, every `every`, until it has been healthy
// once, and returns each endpoint's last result when all have been, or
// when ctx ends. An endpoint is not asked again once healthy: each check
// is a new client and TLS handshake, which a member booting under
// emulation pays for in CPU shared with the members still starting.
func Wait(ctx context.Context, eps []Endpoint, tc *tls.Config, timeout, every time.Duration) []Result {
	return each(eps, func(ep Endpoint) Result {
		var last Result
		for {
			r := check(ctx, ep, tc, timeout)
			if ctx.Err() != nil && !r.Healthy && last.Err != "" {
				return last // cut short: the last full check says more
			}
			last = r
			if r.Healthy {
				return last
			}
			select {
			case <-ctx.Done():
				return last
			case <-time.After(every):
			}
		}
	})
}

// Healthy reports whether every result is healthy.
func Healthy(rs []Result) bool {
	for _, r := range rs {
		if !r.Healthy {
			return false
		}
	}
	return len(rs) > 0
}

// Unhealthy names the members whose result is not healthy, each with its
// URL, in the results' order.
func Unhealthy(rs []Result) []string {
	var bad []string
	for _, r := range rs {
		if !r.Healthy {
			bad = append(bad, fmt.Sprintf("%s (%s)", r.Member, r.URL))
		}
	}
	return bad
}

// Table prints results as etcdctl's `endpoint health -w table` does: the
// runbook's columns.
func Table(w io.Writer, rs []Result) {
	t := tablewriter.NewWriter(w)
	t.Header("ENDPOINT", "HEALTH", "TOOK", "ERROR")
	for _, r := range rs {
		took := r.Took.String()
		if !r.Healthy && r.Took == 0 {
			took = ""
		}
		t.Append(r.URL, fmt.Sprint(r.Healthy), took, r.Err)
	}
	t.Render()
}

// ExpiryWindow is how close to its end a certificate is warned about.
const ExpiryWindow = 30 * 24 * time.Hour

// Expiring dials every endpoint and reads the certificates it serves (its
// own and, through verification, the CA's), and returns a warning for
// each one that ends within the window. Unreachable endpoints are left
// to the health check.
func Expiring(ctx context.Context, eps []Endpoint, tc *tls.Config, now time.Time, within time.Duration) []string {
	var out []string
	for _, ep := range eps {
		host := strings.TrimPrefix(ep.URL, "https://")
		d := tls.Dialer{Config: tc, NetDialer: &net.Dialer{Timeout: 3 * time.Second}}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := d.DialContext(dctx, "tcp", host)
		cancel()
		if err != nil {
			continue
		}
		st := conn.(*tls.Conn).ConnectionState()
		conn.Close()
		seen := map[string]bool{}
		for _, chain := range st.VerifiedChains {
			for _, c := range chain {
				what := fmt.Sprintf("%s's certificate (CN %s)", ep.Member, c.Subject.CommonName)
				if c.IsCA {
					what = fmt.Sprintf("the CA (CN %s) that %s's certificate chains to", c.Subject.CommonName, ep.Member)
				}
				if seen[what] || c.NotAfter.Sub(now) >= within {
					continue
				}
				seen[what] = true
				out = append(out, fmt.Sprintf("%s ends on %s, in %d days", what, c.NotAfter.UTC().Format(time.DateOnly), int(c.NotAfter.Sub(now).Hours()/24)))
			}
		}
	}
	return out
}
