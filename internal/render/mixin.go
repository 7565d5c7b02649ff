package render

import (
	"fmt"
	"strconv"
	"strings"

	"etcdimg/internal/spec"
)

// The etcd mixin (etcd's contrib/mixin, unchanged from v3.7.1 to main at
// c34dc7ee) is where etcd keeps its alerts and dashboard, in jsonnet.
// Its alert templates are carried here as text, each expression exactly
// as upstream writes it, and filled in as the mixin's config.libsonnet
// does. We do not evaluate the jsonnet (go-jsonnet, plus grafonnet for
// the dashboard, would be two more module trees for fifteen strings);
// instead TestMixinAlertsAreUpstreams reads a verbatim copy of upstream's
// alerts.libsonnet (testdata/etcd-mixin) and checks every name,
// expression, "for", severity and annotation here against it, so that
// a port that drifts fails.

// mixinConfig is the mixin's _config: how its templates select our
// scrape job and name a cluster and an instance.
type mixinConfig struct {
	// Selector is etcd_selector: every series of this cluster's etcd.
	Selector string
	// InstanceLabels is etcd_instance_labels: the labels that tell one
	// member from another, aggregated away by the cluster-wide alerts.
	// Our targets carry member beside Prometheus' instance.
	InstanceLabels string
	// ClusterLabel is clusterLabel: the label that names the cluster.
	ClusterLabel string
	// ScrapeIntervalSeconds is scrape_interval_seconds, prometheus.yml's.
	ScrapeIntervalSeconds int
}

// mixinConfigFor is the mixin's config for c's prometheus.yml.
func mixinConfigFor(c *spec.Cluster) mixinConfig {
	return mixinConfig{
		Selector:              fmt.Sprintf(`job="etcd",cluster=%q`, c.Name),
		InstanceLabels:        "instance, member",
		ClusterLabel:          "cluster",
		ScrapeIntervalSeconds: scrapeIntervalSeconds,
	}
}

// format fills a jsonnet format string as the mixin's `%` operator does:
// %(name)s from the config, %% as %.
func (m mixinConfig) format(tmpl string) string {
	return strings.NewReplacer(
		"%(etcd_selector)s", m.Selector,
		"%(etcd_instance_labels)s", m.InstanceLabels,
		"%(clusterLabel)s", m.ClusterLabel,
		// etcdMembersDown's window: four scrapes (network_failure_range).
		"%(network_failure_range)s", strconv.Itoa(4*m.ScrapeIntervalSeconds),
		"%%", "%",
	).Replace(tmpl)
}

// mixinAlert is one of the mixin's alert templates. Description is the
// jsonnet string before `% $._config.clusterLabel`: its %s is the
// cluster label, %% a percent sign.
type mixinAlert struct {
	Name, Expr, For, Severity, Description, Summary, RunbookURL string
}

// mixinAlerts are the mixin's alerts, in upstream's order (two names
// come twice: a warning and a critical threshold).
var mixinAlerts = []mixinAlert{
	{
		Name: "etcdMembersDown",
		Expr: `max without (endpoint) (
  sum without (%(etcd_instance_labels)s) (up{%(etcd_selector)s} == bool 0)
or
  count without (To) (
    sum without (%(etcd_instance_labels)s) (rate(etcd_network_peer_sent_failures_total{%(etcd_selector)s}[%(network_failure_range)ss])) > 0.01
  )
)
> 0
`,
		For: "20m", Severity: "warning",
		Description: `etcd cluster "{{ $labels.%s }}": members are down ({{ $value }}).`,
		Summary:     "etcd cluster members are down.",
	},
	{
		Name: "etcdInsufficientMembers",
		Expr: `sum(up{%(etcd_selector)s} == bool 1) without (%(etcd_instance_labels)s) < ((count(up{%(etcd_selector)s}) without (%(etcd_instance_labels)s) + 1) / 2)
`,
		For: "3m", Severity: "critical",
		Description: `etcd cluster "{{ $labels.%s }}": insufficient members ({{ $value }}).`,
		Summary:     "etcd cluster has insufficient number of members.",
	},
	{
		Name: "etcdNoLeader",
		Expr: `etcd_server_has_leader{%(etcd_selector)s} == 0
`,
		For: "1m", Severity: "critical",
		Description: `etcd cluster "{{ $labels.%s }}": member {{ $labels.instance }} has no leader.`,
		Summary:     "etcd cluster has no leader.",
	},
	{
		Name: "etcdHighNumberOfLeaderChanges",
		Expr: `increase((max without (%(etcd_instance_labels)s) (etcd_server_leader_changes_seen_total{%(etcd_selector)s}) or 0*absent(etcd_server_leader_changes_seen_total{%(etcd_selector)s}))[15m:1m]) >= 4
`,
		For: "5m", Severity: "warning",
		Description: `etcd cluster "{{ $labels.%s }}": {{ $value }} leader changes within the last 15 minutes. Frequent elections may be a sign of insufficient resources, high network latency, or disruptions by other components and should be investigated.`,
		Summary:     "etcd cluster has high number of leader changes.",
	},
	{
		Name: "etcdHighNumberOfFailedGRPCRequests",
		Expr: `100 * sum(rate(grpc_server_handled_total{%(etcd_selector)s, grpc_code=~"Unknown|FailedPrecondition|ResourceExhausted|Internal|Unavailable|DataLoss|DeadlineExceeded"}[5m])) without (grpc_type, grpc_code)
  /
sum(rate(grpc_server_handled_total{%(etcd_selector)s}[5m])) without (grpc_type, grpc_code)
  > 1
`,
		For: "10m", Severity: "warning",
		Description: `etcd cluster "{{ $labels.%s }}": {{ $value }}%% of requests for {{ $labels.grpc_method }} failed on etcd instance {{ $labels.instance }}.`,
		Summary:     "etcd cluster has high number of failed grpc requests.",
	},
	{
		Name: "etcdHighNumberOfFailedGRPCRequests",
		Expr: `100 * sum(rate(grpc_server_handled_total{%(etcd_selector)s, grpc_code=~"Unknown|FailedPrecondition|ResourceExhausted|Internal|Unavailable|DataLoss|DeadlineExceeded"}[5m])) without (grpc_type, grpc_code)
  /
sum(rate(grpc_server_handled_total{%(etcd_selector)s}[5m])) without (grpc_type, grpc_code)
  > 5
`,
		For: "5m", Severity: "critical",
		Description: `etcd cluster "{{ $labels.%s }}": {{ $value }}%% of requests for {{ $labels.grpc_method }} failed on etcd instance {{ $labels.instance }}.`,
		Summary:     "etcd cluster has high number of failed grpc requests.",
	},
	{
		Name: "etcdGRPCRequestsSlow",
		Expr: `histogram_quantile(0.99, sum(rate(grpc_server_handling_seconds_bucket{%(etcd_selector)s, grpc_method!="Defragment", grpc_type="unary"}[5m])) without(grpc_type))
> 0.15
`,
		For: "10m", Severity: "critical",
		Description: `etcd cluster "{{ $labels.%s }}": 99th percentile of gRPC requests is {{ $value }}s on etcd instance {{ $labels.instance }} for {{ $labels.grpc_method }} method.`,
		Summary:     "etcd grpc requests are slow",
	},
	{
		Name: "etcdMemberCommunicationSlow",
		Expr: `histogram_quantile(0.99, rate(etcd_network_peer_round_trip_time_seconds_bucket{%(etcd_selector)s}[5m]))
> 0.15
`,
		For: "10m", Severity: "warning",
		Description: `etcd cluster "{{ $labels.%s }}": member communication with {{ $labels.To }} is taking {{ $value }}s on etcd instance {{ $labels.instance }}.`,
		Summary:     "etcd cluster member communication is slow.",
	},
	{
		Name: "etcdHighNumberOfFailedProposals",
		Expr: `rate(etcd_server_proposals_failed_total{%(etcd_selector)s}[15m]) > 5
`,
		For: "15m", Severity: "warning",
		Description: `etcd cluster "{{ $labels.%s }}": {{ $value }} proposal failures within the last 30 minutes on etcd instance {{ $labels.instance }}.`,
		Summary:     "etcd cluster has high number of proposal failures.",
	},
	{
		Name: "etcdHighFsyncDurations",
		Expr: `histogram_quantile(0.99, rate(etcd_disk_wal_fsync_duration_seconds_bucket{%(etcd_selector)s}[5m]))
> 0.5
`,
		For: "10m", Severity: "warning",
		Description: `etcd cluster "{{ $labels.%s }}": 99th percentile fsync durations are {{ $value }}s on etcd instance {{ $labels.instance }}.`,
		Summary:     "etcd cluster 99th percentile fsync durations are too high.",
	},
	{
		Name: "etcdHighFsyncDurations",
		Expr: `histogram_quantile(0.99, rate(etcd_disk_wal_fsync_duration_seconds_bucket{%(etcd_selector)s}[5m]))
> 1
`,
		For: "10m", Severity: "critical",
		Description: `etcd cluster "{{ $labels.%s }}": 99th percentile fsync durations are {{ $value }}s on etcd instance {{ $labels.instance }}.`,
		Summary:     "etcd cluster 99th percentile fsync durations are too high.",
	},
	{
		Name: "etcdHighCommitDurations",
		Expr: `histogram_quantile(0.99, rate(etcd_disk_backend_commit_duration_seconds_bucket{%(etcd_selector)s}[5m]))
> 0.25
`,
		For: "10m", Severity: "warning",
		Description: `etcd cluster "{{ $labels.%s }}": 99th percentile commit durations {{ $value }}s on etcd instance {{ $labels.instance }}.`,
		Summary:     "etcd cluster 99th percentile commit durations are too high.",
	},
	{
		Name: "etcdDatabaseQuotaLowSpace",
		Expr: `(last_over_time(etcd_mvcc_db_total_size_in_bytes{%(etcd_selector)s}[5m]) / last_over_time(etcd_server_quota_backend_bytes{%(etcd_selector)s}[5m]))*100 > 95
`,
		For: "10m", Severity: "critical",
		Description: `etcd cluster "{{ $labels.%s }}": database size exceeds the defined quota on etcd instance {{ $labels.instance }}, please defrag or increase the quota as the writes to etcd will be disabled when it is full.`,
		Summary:     "etcd cluster database is running full.",
	},
	{
		Name: "etcdExcessiveDatabaseGrowth",
		Expr: `predict_linear(etcd_mvcc_db_total_size_in_bytes{%(etcd_selector)s}[4h], 4*60*60) > etcd_server_quota_backend_bytes{%(etcd_selector)s}
`,
		For: "10m", Severity: "warning",
		Description: `etcd cluster "{{ $labels.%s }}": Predicting running out of disk space in the next four hours, based on write observations within the past four hours on etcd instance {{ $labels.instance }}, please check as it might be disruptive.`,
		Summary:     "etcd cluster database growing very fast.",
	},
	{
		Name: "etcdDatabaseHighFragmentationRatio",
		Expr: `(last_over_time(etcd_mvcc_db_total_size_in_use_in_bytes{%(etcd_selector)s}[5m]) / last_over_time(etcd_mvcc_db_total_size_in_bytes{%(etcd_selector)s}[5m])) < 0.5 and etcd_mvcc_db_total_size_in_use_in_bytes{%(etcd_selector)s} > 104857600
`,
		For: "10m", Severity: "warning",
		Description: `etcd cluster "{{ $labels.%s }}": database size in use on instance {{ $labels.instance }} is {{ $value | humanizePercentage }} of the actual allocated disk space, please run defragmentation (e.g. etcdctl defrag) to retrieve the unused fragmented disk space.`,
		Summary:     "etcd database size in use is less than 50% of the actual allocated storage.",
		RunbookURL:  "https://etcd.io/docs/v3.5/op-guide/maintenance/#defragmentation",
	},
}

// MixinAlerts are etcd's mixin alerts for c, with upstream's names,
// expressions, thresholds and annotations.
func MixinAlerts(c *spec.Cluster) []Alert {
	cfg := mixinConfigFor(c)
	var out []Alert
	for _, a := range mixinAlerts {
		ann := map[string]string{
			"description": cfg.format(strings.Replace(a.Description, "%s", cfg.ClusterLabel, 1)),
			"summary":     a.Summary,
		}
		if a.RunbookURL != "" {
			ann["runbook_url"] = a.RunbookURL
		}
		out = append(out, Alert{
			Alert: a.Name, Expr: cfg.format(a.Expr), For: a.For,
			Labels:      map[string]string{"severity": a.Severity},
			Annotations: ann,
		})
	}
	return out
}
