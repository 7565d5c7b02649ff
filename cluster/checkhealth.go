package cluster

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"etcdimg/cluster/health"
	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
)

// CheckHealth is `etcdimg health`: every member over mTLS within
// timeout, printed as a table to out; once all are healthy, the cluster
// ID is confirmed (ConfirmClusterID); certificates near their end are
// warned about on warn. It returns an error naming the unhealthy
// members.
func (e *Etcd) CheckHealth(ctx context.Context, c *spec.Cluster, dir outdir.Layout, timeout time.Duration, out, warn io.Writer) error {
	rs := health.Check(ctx, e.Endpoints, e.TLS, timeout)
	health.Table(out, rs)
	if health.Healthy(rs) {
		if err := ConfirmClusterID(ctx, c, dir, e); err != nil {
			fmt.Fprintf(warn, "warning: cluster ID: %v\n", err)
		}
	}
	for _, w := range health.Expiring(ctx, e.Endpoints, e.TLS, time.Now(), health.ExpiryWindow) {
		fmt.Fprintf(warn, "warning: %s: rebuild and roll the members (a leaf is reissued within 30 days of its end), or make a new CA\n", w)
	}
	if bad := health.Unhealthy(rs); len(bad) > 0 {
		return fmt.Errorf("health: unhealthy: %s", strings.Join(bad, ", "))
	}
	return nil
}
