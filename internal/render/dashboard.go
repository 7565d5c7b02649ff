package render

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
)

// DashboardFile is the Grafana dashboard's file name, beside
// prometheus.yml.
const DashboardFile = outdir.DashboardFile

// The dashboard is etcd's mixin dashboard (contrib/mixin/dashboards,
// etcd.libsonnet with its targets.libsonnet, unchanged from v3.7.1 to
// main at c34dc7ee): its panels, queries, legends and units, filled in
// with our job and cluster label as the mixin's config does; then a
// row of the appliance's own panels. It is built with Grafana's
// foundation SDK, the typed Go of Grafana's schema, never as text.
//
// The mixin's queries are carried as its targets.libsonnet writes them
// (TestDashboardTargetsAreUpstreams checks them against a verbatim copy)
// except one: upstream's current "Raft proposals" panel repeats the
// leader-election query (a copy-paste slip in targets.libsonnet), so
// that panel takes the four proposal queries of the mixin's Grafana 7
// dashboard (etcd-grafana7x.libsonnet) instead.

// dashboardConfig fills the mixin's dashboard templates: the dashboard
// selects a cluster with its $cluster variable, so its etcd selector is
// the job alone.
var dashboardConfig = mixinConfig{Selector: `job="etcd"`, ClusterLabel: "cluster", ScrapeIntervalSeconds: scrapeIntervalSeconds}

// mixinTarget is one of the mixin's dashboard queries, as
// targets.libsonnet writes it: Expr's first %s is the etcd selector,
// its second the cluster label, or %(name)s the config's fields.
type mixinTarget struct {
	Name, Expr, Legend string
}

// mixinTargets are targets.libsonnet's, in its order.
var mixinTargets = []mixinTarget{
	{"up", `sum(etcd_server_has_leader{%s, %s="$cluster"})`, "{{cluster}} - {{namespace}}\n"},
	{"rpcRate", `sum(rate(grpc_server_started_total{%s, %s="$cluster",grpc_type="unary"}[$__rate_interval]))`, "RPC rate"},
	{"rpcFailedRate", `sum(rate(grpc_server_handled_total{%s, %s="$cluster",grpc_type="unary",grpc_code=~"Unknown|FailedPrecondition|ResourceExhausted|Internal|Unavailable|DataLoss|DeadlineExceeded"}[$__rate_interval]))`, "RPC failed rate"},
	{"watchStreams", `sum(grpc_server_started_total{%(etcd_selector)s,%(clusterLabel)s="$cluster",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"}) - sum(grpc_server_handled_total{%(clusterLabel)s="$cluster",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"})`, "Watch streams"},
	{"leaseStreams", `sum(grpc_server_started_total{%(etcd_selector)s,%(clusterLabel)s="$cluster",grpc_service="etcdserverpb.Lease",grpc_type="bidi_stream"}) - sum(grpc_server_handled_total{%(clusterLabel)s="$cluster",grpc_service="etcdserverpb.Lease",grpc_type="bidi_stream"})`, "Lease streams"},
	{"dbSize", `etcd_mvcc_db_total_size_in_bytes{%s, %s="$cluster"}`, "{{instance}} DB size"},
	{"walFsync", `histogram_quantile(0.99, sum(rate(etcd_disk_wal_fsync_duration_seconds_bucket{%s, %s="$cluster"}[$__rate_interval])) by (instance, le))`, "{{instance}} WAL fsync"},
	{"dbFsync", `histogram_quantile(0.99, sum(rate(etcd_disk_backend_commit_duration_seconds_bucket{%s, %s="$cluster"}[$__rate_interval])) by (instance, le))`, "{{instance}} DB fsync"},
	{"memory", `process_resident_memory_bytes{%s, %s="$cluster"}`, "{{instance}} resident memory"},
	{"clientTrafficIn", `rate(etcd_network_client_grpc_received_bytes_total{%s, %s="$cluster"}[$__rate_interval])`, "{{instance}} client traffic in"},
	{"clientTrafficOut", `rate(etcd_network_client_grpc_sent_bytes_total{%s, %s="$cluster"}[$__rate_interval])`, "{{instance}} client traffic out"},
	{"peerTrafficIn", `sum(rate(etcd_network_peer_received_bytes_total{%s, %s="$cluster"}[$__rate_interval])) by (instance)`, "{{instance}} peer traffic in"},
	{"peerTrafficOut", `sum(rate(etcd_network_peer_sent_bytes_total{%s, %s="$cluster"}[$__rate_interval])) by (instance)`, "{{instance}} peer traffic out"},
	{"raftProposals", `changes(etcd_server_leader_changes_seen_total{%s, %s="$cluster"}[1d])`, "{{instance}} total leader elections per day"},
	{"leaderElections", `changes(etcd_server_leader_changes_seen_total{%s, %s="$cluster"}[1d])`, "{{instance}} total leader elections per day"},
	{"peerRtt", `histogram_quantile(0.99, sum by (instance, le) (rate(etcd_network_peer_round_trip_time_seconds_bucket{%s, %s="$cluster"}[$__rate_interval])))`, "{{instance}} peer round trip time"},
}

// grafana7xProposals are the Grafana 7 dashboard's "Raft Proposals"
// queries, which the current dashboard lost.
var grafana7xProposals = []mixinTarget{
	{"proposalFailureRate", `sum(rate(etcd_server_proposals_failed_total{%s, %s="$cluster"}[$__rate_interval]))`, "Proposal Failure Rate"},
	{"proposalPendingTotal", `sum(etcd_server_proposals_pending{%s, %s="$cluster"})`, "Proposal Pending Total"},
	{"proposalCommitRate", `sum(rate(etcd_server_proposals_committed_total{%s, %s="$cluster"}[$__rate_interval]))`, "Proposal Commit Rate"},
	{"proposalApplyRate", `sum(rate(etcd_server_proposals_applied_total{%s, %s="$cluster"}[$__rate_interval]))`, "Proposal Apply Rate"},
}

// expr fills a mixin target as jsonnet would: the positional form with
// [etcd_selector, clusterLabel], or the named one.
func (m mixinConfig) expr(t mixinTarget) string {
	e := t.Expr
	if strings.Contains(e, "%s") {
		e = strings.Replace(e, "%s", m.Selector, 1)
		e = strings.Replace(e, "%s", m.ClusterLabel, 1)
	}
	return m.format(e)
}

// promDatasource is every query's data source: the dashboard's
// $datasource variable, as the mixin's.
func promDatasource() common.DataSourceRef {
	return common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("$datasource")}
}

// query is a Prometheus query of the dashboard.
func query(expr, legend string) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().Datasource(promDatasource()).Expr(expr).LegendFormat(legend)
}

// targets are a panel's queries, with their refIds A, B, ...
func targets(qs ...*prometheus.DataqueryBuilder) []cog.Builder[variants.Dataquery] {
	var out []cog.Builder[variants.Dataquery]
	for i, q := range qs {
		out = append(out, q.RefId(string(rune('A'+i))))
	}
	return out
}

// mixinQueries are the named mixin targets, filled in.
func mixinQueries(ts ...mixinTarget) []*prometheus.DataqueryBuilder {
	var out []*prometheus.DataqueryBuilder
	for _, t := range ts {
		out = append(out, query(dashboardConfig.expr(t), t.Legend))
	}
	return out
}

func target(name string) mixinTarget {
	for _, t := range mixinTargets {
		if t.Name == name {
			return t
		}
	}
	panic("render: no mixin target " + name)
}

// timeSeries is panels.libsonnet's timeSeries.base (a 1-minute
// interval, lines 2 wide, no fill, no points) with Grafana's own
// legend and tooltip.
func timeSeries(title, unit string, w uint32, qs ...*prometheus.DataqueryBuilder) *timeseries.PanelBuilder {
	p := timeseries.NewPanelBuilder().Title(title).Datasource(promDatasource()).Targets(targets(qs...)).
		Interval("1m").LineWidth(2).FillOpacity(0).ShowPoints(common.VisibilityModeNever).
		Legend(common.NewVizLegendOptionsBuilder().ShowLegend(true).DisplayMode(common.LegendDisplayModeList).Placement(common.LegendPlacementBottom)).
		Tooltip(common.NewVizTooltipOptionsBuilder().Mode(common.TooltipDisplayModeSingle).Sort(common.SortOrderNone)).
		Height(7).Span(w)
	if unit != "" {
		p = p.Unit(unit)
	}
	return p
}

// statPanel is panels.libsonnet's stat.up: the last value, no colour,
// no graph.
func statPanel(title string, w uint32, qs ...*prometheus.DataqueryBuilder) *stat.PanelBuilder {
	return stat.NewPanelBuilder().Title(title).Datasource(promDatasource()).Targets(targets(qs...)).
		Interval("1m").ColorMode(common.BigValueColorModeNone).GraphMode(common.BigValueGraphModeNone).
		Orientation(common.VizOrientationAuto).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"})).
		Height(7).Span(w)
}

// tablePanel shows one instant query's series as rows, their labels
// as columns, hiding the hidden columns.
func tablePanel(title string, w uint32, expr string, hidden ...string) *table.PanelBuilder {
	exclude := map[string]bool{"Time": true}
	for _, h := range hidden {
		exclude[h] = true
	}
	return table.NewPanelBuilder().Title(title).Datasource(promDatasource()).
		Targets(targets(query(expr, "").Instant().Format(prometheus.PromQueryFormatTable))).
		Footer(common.NewTableFooterOptionsBuilder().Show(false).Reducer([]string{})).
		WithTransformation(dashboard.DataTransformerConfig{Id: "organize", Options: map[string]any{"excludeByName": exclude}}).
		Height(7).Span(w)
}

// The appliance's panels' selectors; etcd's for the panels on etcd's
// own metrics about what the appliance does (defragmentation).
const (
	nodeSel = `job="etcdimg", cluster="$cluster"`
	etcdSel = `job="etcd", cluster="$cluster"`
)

// Dashboard is grafana-dashboard.json: etcd's mixin dashboard for c's
// clusters (the $cluster variable starts at c's), then the appliance's
// row: backups, defragmentation and alarms, certificates, images.
func Dashboard(c *spec.Cluster) ([]byte, error) {
	name := dashboard.StringOrArrayOfString{String: cog.ToPtr(c.Name)}
	cluster := dashboard.NewQueryVariableBuilder("cluster").Label("cluster").
		Datasource(promDatasource()).
		Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
		Query(dashboard.StringOrMap{String: cog.ToPtr(`label_values(etcd_server_has_leader{job="etcd"}, cluster)`)}).
		Current(dashboard.VariableOption{Text: name, Value: name})
	q := query
	mixin := []cog.Builder[dashboard.Panel]{
		// etcd.libsonnet's panels, in its order, widths and units.
		statPanel("Up", 6, mixinQueries(target("up"))...),
		timeSeries("RPC rate", "ops", 10, mixinQueries(target("rpcRate"), target("rpcFailedRate"))...),
		timeSeries("Active streams", "", 8, mixinQueries(target("watchStreams"), target("leaseStreams"))...),
		timeSeries("DB size", "bytes", 8, mixinQueries(target("dbSize"))...),
		timeSeries("Disk sync duration", "s", 8, mixinQueries(target("walFsync"), target("dbFsync"))...),
		timeSeries("Memory", "bytes", 8, mixinQueries(target("memory"))...),
		timeSeries("Client traffic in", "Bps", 6, mixinQueries(target("clientTrafficIn"))...),
		timeSeries("Client traffic out", "Bps", 6, mixinQueries(target("clientTrafficOut"))...),
		timeSeries("Peer traffic in", "Bps", 6, mixinQueries(target("peerTrafficIn"))...),
		timeSeries("Peer traffic out", "Bps", 6, mixinQueries(target("peerTrafficOut"))...),
		timeSeries("Raft proposals", "", 8, mixinQueries(grafana7xProposals...)...),
		timeSeries("Total leader elections per day", "", 8, mixinQueries(target("leaderElections"))...),
		timeSeries("Peer round trip time", "s", 8, mixinQueries(target("peerRtt"))...),
	}
	appliance := []cog.Builder[dashboard.Panel]{
		timeSeries("Last verified backup age", "s", 8,
			q(fmt.Sprintf(`time() - max by (cluster) (etcdimg_backup_last_success_timestamp_seconds{%s})`, nodeSel), "age"),
			q(fmt.Sprintf(`2 * max by (cluster) (etcdimg_backup_interval_seconds{%s})`, nodeSel), "EtcdBackupTooOld above")).
			Description("The newest verified backup any member reports; EtcdBackupTooOld fires above two backup intervals."),
		timeSeries("Backups stored and failed (1 h)", "", 8,
			q(fmt.Sprintf(`sum by (target) (increase(etcdimg_backup_success_total{%s}[1h]))`, nodeSel), "{{target}} stored"),
			q(fmt.Sprintf(`sum by (target) (increase(etcdimg_backup_failures_total{%s}[1h]))`, nodeSel), "{{target}} failed")),
		timeSeries("Last backup size", "bytes", 8,
			q(fmt.Sprintf(`max by (cluster) (etcdimg_backup_last_size_bytes{%s})`, nodeSel), "snapshot")),
		timeSeries("Free pages (what defragmentation reclaims)", "bytes", 8,
			q(fmt.Sprintf(`etcd_mvcc_db_total_size_in_bytes{%[1]s} - etcd_mvcc_db_total_size_in_use_in_bytes{%[1]s}`, etcdSel), "{{member}}")).
			Description("The database file's size less what is in use, per member: scheduled defragmentation reclaims it; etcdDatabaseHighFragmentationRatio fires under half in use."),
		timeSeries("Defragmentation", "", 8,
			q(fmt.Sprintf(`etcd_disk_defrag_inflight{%s}`, etcdSel), "{{member}} running"),
			q(fmt.Sprintf(`increase(%s{%s}[1h])`, metricDefragFailures, nodeSel), "{{member}} failed (1 h)"),
			q(fmt.Sprintf(`histogram_quantile(0.99, sum by (member, le) (rate(etcd_disk_backend_defrag_duration_seconds_bucket{%s}[$__rate_interval])))`, etcdSel), "{{member}} p99 seconds")).
			Description("A member being defragmented (etcd's gauge), failures in the last hour (EtcdDefragmentationFailing), and how long a defragmentation takes."),
		timeSeries("Since the last defragmentation", "s", 8,
			q(fmt.Sprintf(`time() - %s{%s}`, metricDefragLastSuccess, nodeSel), "{{member}}")),
		timeSeries("Alarms", "", 8,
			q(fmt.Sprintf(`max by (member, alarm) (%s{%s})`, metricAlarmActive, nodeSel), "{{member}} {{alarm}}")).
			Description("1 while etcd holds the alarm for the member: NOSPACE (writes refused until the members compact, defragment and disarm), CORRUPT (replace the member)."),
		statPanel("Rolled back", 4,
			q(fmt.Sprintf(`sum(etcdimg_slot_rolled_back{%s})`, nodeSel), "rolled back")).
			Description("Members that came back from an update whose boot tries were spent (EtcdMemberRolledBack)."),
		tablePanel("Certificates expire in", 12,
			fmt.Sprintf(`min by (member, certificate) (etcdimg_certificate_expiry_timestamp_seconds{%s}) - time()`, nodeSel)).
			Unit("s").
			Description("Time until each certificate a member uses expires; EtcdCertificateExpiring fires under 30 days."),
		tablePanel("Image digests", 24,
			fmt.Sprintf(`max by (member, slot, gen, state, digest, etcd, kernel) (etcdimg_image_info{%s})`, nodeSel), "Value").
			Description("The boot slot each member runs: slot, generation, state, digest (images/manifest.json's slot_digest), etcd and kernel."),
	}
	b := dashboard.NewDashboardBuilder("etcd (etcdimg)").
		Uid("etcdimg-etcd").
		Description("etcd's mixin dashboard (etcd's contrib/mixin), then the etcdimg appliance's backups, defragmentation, alarms, certificates and images; written by etcdimg render").
		Tags([]string{"etcd-mixin", "etcdimg"}).
		Refresh("10s").
		Time("now-15m", "now").
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Data Source").Type("prometheus")).
		WithVariable(cluster)
	id := uint32(1)
	for _, row := range []struct {
		title  string
		panels []cog.Builder[dashboard.Panel]
	}{
		{"etcd (etcd's mixin)", mixin},
		{"etcdimg: backups, defragmentation, alarms, certificates, images", appliance},
	} {
		b.WithRow(dashboard.NewRowBuilder(row.title).Id(id))
		id++
		for _, p := range row.panels {
			b.WithPanel(withID(p, &id))
		}
	}
	d, err := b.Build()
	if err != nil {
		return nil, fmt.Errorf("render: build %s: %w", DashboardFile, err)
	}
	out, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("render: encode %s: %w", DashboardFile, err)
	}
	return append(out, '\n'), nil
}

// withID numbers a panel, in the dashboard's order.
func withID(p cog.Builder[dashboard.Panel], id *uint32) cog.Builder[dashboard.Panel] {
	n := *id
	*id++
	switch p := p.(type) {
	case *timeseries.PanelBuilder:
		return p.Id(n)
	case *stat.PanelBuilder:
		return p.Id(n)
	case *table.PanelBuilder:
		return p.Id(n)
	}
	panic(fmt.Sprintf("render: panel builder %T has no Id", p))
}

// PanelQuery is one query of a dashboard panel.
type PanelQuery struct {
	Panel, Expr string
}

// DashboardQueries reads every panel's queries from a dashboard's JSON,
// rows' panels included, in the dashboard's order.
func DashboardQueries(b []byte) ([]PanelQuery, error) {
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("render: read %s: %w", DashboardFile, err)
	}
	var out []PanelQuery
	var walk func([]json.RawMessage) error
	walk = func(raws []json.RawMessage) error {
		for _, raw := range raws {
			var p panel
			if err := json.Unmarshal(raw, &p); err != nil {
				return fmt.Errorf("render: read %s: %w", DashboardFile, err)
			}
			for _, t := range p.Targets {
				out = append(out, PanelQuery{Panel: p.Title, Expr: t.Expr})
			}
			if err := walk(p.Panels); err != nil {
				return err
			}
		}
		return nil
	}
	return out, walk(d.Panels)
}

// ExpandQuery fills a panel's query as Grafana would for a cluster:
// $cluster, and $__rate_interval with rate (Grafana's: the larger of the
// panel's interval plus a scrape interval, and four scrape intervals).
func ExpandQuery(expr, cluster, rate string) string {
	return strings.NewReplacer("$__rate_interval", rate, "${cluster}", cluster, "$cluster", cluster).Replace(expr)
}

// DashboardRateInterval is $__rate_interval for the dashboard's panels
// (a 1-minute interval) over prometheus.yml's 10 s scrapes.
const DashboardRateInterval = "70s"
