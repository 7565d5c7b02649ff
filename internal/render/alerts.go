package render

import (
	"bytes"
	"fmt"

	"gopkg.in/yaml.v3"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
)

// RulesFile is the alert rules' file name, beside prometheus.yml, which
// names it in rule_files (Prometheus reads it relative to its config).
const RulesFile = outdir.RulesFile

// futureSkew is how far ahead of Prometheus' clock, in seconds, a
// backup's time may be before it counts as from the future: the backup
// service's own tolerance (backup.MaxSkew, five minutes).
const futureSkew = 300

// The appliance's metrics these rules and the dashboard read, as the
// node serves them on its metrics port (job NodeJob): those of backups,
// certificates and boot slots (firstboot/backupd/metrics.go), and the
// maintenance's (firstboot/maintd):
//
//   - etcdimg_defrag_failures_total: counter, defragmentations of this
//     member that failed, 0 from the start;
//   - etcdimg_defrag_last_success_timestamp_seconds: gauge, when this
//     member was last defragmented (Unix time); before the first, when
//     the service started, as the backups' last success is;
//   - etcdimg_alarm_active{alarm="NOSPACE"|"CORRUPT"|...}: gauge, 1 while
//     etcd holds that alarm for this member, else 0, each of NOSPACE and
//     CORRUPT always present.
//
// etcd's own etcd_debugging_server_alarms{server_id,alarm_type} counts
// alarms applied since that member's etcd started (it reads nothing after
// a restart, and may go negative), so the alarm rules prefer ours and
// fall back to it.
const (
	metricDefragFailures    = "etcdimg_defrag_failures_total"
	metricDefragLastSuccess = "etcdimg_defrag_last_success_timestamp_seconds"
	metricAlarmActive       = "etcdimg_alarm_active"
)

// MetricsNotExportedYet are the appliance metrics the rules and the
// dashboard read before the node serves them (none now). The e2e
// dashboard check lets their panels come back empty, and a unit test
// fails once firstboot exports one, so that the list shrinks and the
// check is strict again.
func MetricsNotExportedYet() []string { return nil }

// Alert is one Prometheus alerting rule.
type Alert struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for,omitempty"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// Alerts are etcdimg's own rules, beside the mixin's: on etcd's metrics
// where a member-by-member alert says more than the mixin's cluster-wide
// one, and on the appliance's (backups, certificates, defragmentation,
// alarms, boot slots).
func Alerts(c *spec.Cluster) []Alert {
	sel := fmt.Sprintf(`job="etcd",cluster=%q`, c.Name)
	node := fmt.Sprintf(`job=%q,cluster=%q`, NodeJob, c.Name)
	// An alarm from our metric; while no node reports one (a node not
	// answering, an image from before the metric), from etcd's own
	// count. Both name it "alarm"; ours names the member, etcd's its ID.
	alarm := func(match string) string {
		return fmt.Sprintf(`max by (cluster, member, alarm) (%[1]s{%[2]s,alarm%[4]s"CORRUPT"}) > 0 or on (cluster) max by (cluster, server_id, alarm) (label_replace(etcd_debugging_server_alarms{%[3]s,alarm_type%[4]s"CORRUPT"}, "alarm", "$1", "alarm_type", "(.+)")) > 0`, metricAlarmActive, node, sel, match)
	}
	return []Alert{
		{
			Alert: "EtcdMemberDown",
			Expr:  fmt.Sprintf(`up{%s} == 0`, sel),
			For:   "1m", Labels: map[string]string{"severity": "critical"},
			Annotations: map[string]string{"summary": "etcd member {{ $labels.member }} of {{ $labels.cluster }} has not answered a scrape for a minute"},
		},
		{
			Alert: "EtcdNoLeader",
			Expr:  fmt.Sprintf(`etcd_server_has_leader{%s} == 0`, sel),
			For:   "1m", Labels: map[string]string{"severity": "critical"},
			Annotations: map[string]string{"summary": "etcd member {{ $labels.member }} of {{ $labels.cluster }} has had no leader for a minute: it cannot serve writes"},
		},
		{
			Alert: "EtcdDatabaseNearQuota",
			Expr:  fmt.Sprintf(`etcd_mvcc_db_total_size_in_bytes{%[1]s} / etcd_server_quota_backend_bytes{%[1]s} > 0.8`, sel),
			For:   "10m", Labels: map[string]string{"severity": "warning"},
			Annotations: map[string]string{"summary": "etcd member {{ $labels.member }} of {{ $labels.cluster }}: the database is {{ $value | humanizePercentage }} of its quota; compact and defragment, or raise etcd.backendQuota, before writes stop with NOSPACE"},
		},
		{
			Alert: "EtcdFrequentLeaderChanges",
			Expr:  fmt.Sprintf(`increase(etcd_server_leader_changes_seen_total{%s}[15m]) > 3`, sel),
			For:   "5m", Labels: map[string]string{"severity": "warning"},
			Annotations: map[string]string{"summary": "etcd member {{ $labels.member }} of {{ $labels.cluster }} saw more than 3 leader changes in 15 minutes: the network or the disks are too slow for the election timeout"},
		},
		{
			// Every member reports the cluster's last backup; the newest
			// any member reports is the cluster's. A report dated in the
			// future (beyond futureSkew) is left out: it would make the
			// age negative and silence this alert for ever, and
			// EtcdBackupRecordFromFuture fires on it.
			Alert: "EtcdBackupTooOld",
			Expr:  fmt.Sprintf(`time() - max by (cluster) (etcdimg_backup_last_success_timestamp_seconds{%[1]s} unless etcdimg_backup_last_success_timestamp_seconds{%[1]s} - time() > %[2]d) > 2 * max by (cluster) (etcdimg_backup_interval_seconds{%[1]s})`, node, futureSkew),
			For:   "5m", Labels: map[string]string{"severity": "critical"},
			Annotations: map[string]string{"summary": "the last verified backup of {{ $labels.cluster }} is {{ $value | humanizeDuration }} old, over two backup intervals: see the members' consoles and etcdimg_backup_failures_total"},
		},
		{
			// A record dated in the future: a member found one (and
			// backed up anyway), or a member reports one as the last
			// backup. Either way a clock runs ahead, or something wrote
			// under /etcdimg/, and age-based retention is suspended on
			// the members that see it.
			Alert: "EtcdBackupRecordFromFuture",
			Expr:  fmt.Sprintf(`(sum by (cluster) (increase(etcdimg_backup_future_records_total{%[1]s}[1h])) > 0) or (max by (cluster) (etcdimg_backup_last_success_timestamp_seconds{%[1]s}) - time() > %[2]d)`, node, futureSkew),
			For:   "5m", Labels: map[string]string{"severity": "critical"},
			Annotations: map[string]string{"summary": "a backup record of {{ $labels.cluster }} is dated in the future (a member's clock runs ahead, or a client wrote /etcdimg/backup/last): fix the members' clocks (NTP); see the members' consoles and etcdimg_backup_future_records_total"},
		},
		{
			Alert: "EtcdCertificateExpiring",
			Expr:  fmt.Sprintf(`etcdimg_certificate_expiry_timestamp_seconds{%s} - time() < 30 * 86400`, node),
			For:   "1h", Labels: map[string]string{"severity": "warning"},
			Annotations: map[string]string{"summary": "the {{ $labels.certificate }} certificate of {{ $labels.member }} ({{ $labels.cluster }}) expires within 30 days: rotate it and roll the images"},
		},
		{
			// A defragmentation failed within the hour and none has
			// succeeded for an hour: one failure between successes is
			// retried; this is a member whose free pages stay. The
			// expression spans the hour itself, so it needs no "for".
			Alert:       "EtcdDefragmentationFailing",
			Expr:        fmt.Sprintf(`increase(%[2]s{%[1]s}[1h]) > 0 and time() - %[3]s{%[1]s} > 3600`, node, metricDefragFailures, metricDefragLastSuccess),
			Labels:      map[string]string{"severity": "warning"},
			Annotations: map[string]string{"summary": "defragmentation of {{ $labels.member }} ({{ $labels.cluster }}) keeps failing and has not succeeded for over an hour: see its console; its free pages stay and its database moves towards the quota (NOSPACE); `etcdimg defrag {{ $labels.member }}` tries it now"},
		},
		{
			Alert: "EtcdAlarmActive",
			Expr:  alarm("!="),
			For:   "1m", Labels: map[string]string{"severity": "critical"},
			Annotations: map[string]string{"summary": "etcd alarm {{ $labels.alarm }} is raised for {{ $labels.member }}{{ $labels.server_id }} of {{ $labels.cluster }}: with NOSPACE the cluster refuses writes (deletes still go through) until the members have compacted, defragmented and disarmed it; if it stays, live data fills the quota: delete keys or grow the data disks (see `etcdimg alarms`)"},
		},
		{
			Alert:  "EtcdMemberCorrupt",
			Expr:   alarm("="),
			Labels: map[string]string{"severity": "critical"},
			// etcd names member ID 0 when no majority agrees on a hash.
			Annotations: map[string]string{"summary": `{{ if eq $labels.server_id "0" }}etcd raised CORRUPT for the whole cluster {{ $labels.cluster }}: no majority of members agrees on a hash, and it takes no writes (reads are still served); restore it from a verified backup (etcdimg restore){{ else }}etcd member {{ $labels.member }}{{ $labels.server_id }} of {{ $labels.cluster }} is corrupt (CORRUPT alarm): its data differs from its peers' or its database is damaged, and the cluster takes no writes while the alarm stands (reads are still served, from that member too); etcd refuses the lease the operation lock needs meanwhile, so power the member off first (the leader re-raises the alarm while it answers), then disarm it by hand (etcdimg etcdctl -- alarm disarm) and replace it ({{ if $labels.member }}etcdimg replace {{ $labels.member }}{{ else }}etcdctl member list names the member of that ID; etcdimg replace NAME{{ end }}) to heal it from its peers{{ end }}`},
		},
		{
			// The member came back from an update whose boot tries were
			// spent: it runs the older slot; the gauge stays 1 while that
			// spent slot is on the ESP, until the next update replaces it.
			Alert:       "EtcdMemberRolledBack",
			Expr:        fmt.Sprintf(`etcdimg_slot_rolled_back{%s} > 0`, node),
			Labels:      map[string]string{"severity": "warning"},
			Annotations: map[string]string{"summary": "{{ $labels.member }} of {{ $labels.cluster }} rolled back from slot {{ $labels.from }}: the update did not become a caught-up voter within its boot tries; see the member's console and `etcdimg status`, then upgrade again"},
		},
	}
}

// Rules is prometheus-rules.yml: etcd's mixin alerts (group "etcd", as
// upstream names it) and etcdimg's own.
func Rules(c *spec.Cluster) ([]byte, error) {
	type group struct {
		Name  string  `yaml:"name"`
		Rules []Alert `yaml:"rules"`
	}
	doc := struct {
		Groups []group `yaml:"groups"`
	}{Groups: []group{
		{Name: "etcd", Rules: MixinAlerts(c)},
		{Name: "etcdimg-" + c.Name, Rules: Alerts(c)},
	}}
	var b bytes.Buffer
	b.WriteString("# Alert rules for the etcd cluster " + c.Name + ", written by etcdimg; prometheus.yml loads them.\n")
	b.WriteString("# Group etcd is etcd's own mixin (contrib/mixin in etcd's repository), group etcdimg-" + c.Name + " the appliance's.\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("render: encode %s: %w", RulesFile, err)
	}
	enc.Close()
	return b.Bytes(), nil
}
