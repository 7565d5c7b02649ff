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

// Alert is one Prometheus alerting rule.
type Alert struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// Alerts are the rules an operator of the cluster expects: on etcd's
// metrics, and on the appliance's (backups, certificates).
func Alerts(c *spec.Cluster) []Alert {
	sel := fmt.Sprintf(`job="etcd",cluster=%q`, c.Name)
	node := fmt.Sprintf(`job=%q,cluster=%q`, NodeJob, c.Name)
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
			Expr:  fmt.Sprintf(`time() - max by (cluster) (etcdimg_backup_last_success_timestamp_seconds{%[1]s} < time() + %[2]d) > 2 * max by (cluster) (etcdimg_backup_interval_seconds{%[1]s})`, node, futureSkew),
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
	}
}

// Rules is prometheus-rules.yml.
func Rules(c *spec.Cluster) ([]byte, error) {
	type group struct {
		Name  string  `yaml:"name"`
		Rules []Alert `yaml:"rules"`
	}
	doc := struct {
		Groups []group `yaml:"groups"`
	}{Groups: []group{{Name: "etcd-" + c.Name, Rules: Alerts(c)}}}
	var b bytes.Buffer
	b.WriteString("# Alert rules for the etcd cluster " + c.Name + ", written by etcdimg; prometheus.yml loads them.\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("render: encode %s: %w", RulesFile, err)
	}
	enc.Close()
	return b.Bytes(), nil
}
