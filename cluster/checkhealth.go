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
// warned about on warn. It returns an error naming each active alarm
// with the member that raised it and what to do (`etcd-2: alarm
// NOSPACE: ...`), and the members unhealthy for other reasons.
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
	// An alarm is the cluster's, not one member's: every member that
	// answers lists it. Name it once, by the member that raised it, with
	// what to do; the members unhealthy for another reason after it.
	var why, bad []string
	alarmed := false
	for _, r := range rs {
		if len(r.Alarms) > 0 {
			alarmed = true
		} else if !r.Healthy {
			bad = append(bad, fmt.Sprintf("%s (%s)", r.Member, r.URL))
		}
	}
	if alarmed {
		alarms, err := e.Alarms(ctx)
		if err != nil {
			why = append(why, "active alarms ("+err.Error()+")")
		} else if len(alarms) == 0 {
			why = append(why, "an alarm the members listed was gone on a second look; run health again")
		}
		for _, a := range alarms {
			why = append(why, a.String()+": "+a.Remedy())
		}
	}
	if len(bad) > 0 {
		why = append(why, "unhealthy: "+strings.Join(bad, ", "))
	}
	if len(why) > 0 {
		return fmt.Errorf("health: %s", strings.Join(why, "; "))
	}
	return nil
}
