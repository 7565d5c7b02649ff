package render

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"etcdimg/internal/backup"
	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// ruleTests are promtool unit tests of every alert: each fires on the
// series that should raise it, after its "for", and not on a healthy
// cluster's.
const ruleTests = `rule_files: [prometheus-rules.yml]
evaluation_interval: 30s
tests:
  - interval: 30s
    input_series:
      - series: 'up{job="etcd",cluster="etcd-cluster-1",member="etcd-1"}'
        values: '1x20'
      - series: 'up{job="etcd",cluster="etcd-cluster-1",member="etcd-2"}'
        values: '1 1 0x20'
      - series: 'etcd_server_has_leader{job="etcd",cluster="etcd-cluster-1",member="etcd-1"}'
        values: '1x20'
      - series: 'etcd_server_has_leader{job="etcd",cluster="etcd-cluster-1",member="etcd-3"}'
        values: '1 1 1 0x20'
    alert_rule_test:
      - eval_time: 30s
        alertname: EtcdMemberDown
        exp_alerts: []
      - eval_time: 3m
        alertname: EtcdMemberDown
        exp_alerts:
          - exp_labels: {severity: critical, job: etcd, cluster: etcd-cluster-1, member: etcd-2}
            exp_annotations:
              summary: "etcd member etcd-2 of etcd-cluster-1 has not answered a scrape for a minute"
      - eval_time: 1m
        alertname: EtcdNoLeader
        exp_alerts: []
      - eval_time: 3m
        alertname: EtcdNoLeader
        exp_alerts:
          - exp_labels: {severity: critical, job: etcd, cluster: etcd-cluster-1, member: etcd-3}
            exp_annotations:
              summary: "etcd member etcd-3 of etcd-cluster-1 has had no leader for a minute: it cannot serve writes"
  - interval: 1m
    input_series:
      - series: 'etcd_mvcc_db_total_size_in_bytes{job="etcd",cluster="etcd-cluster-1",member="etcd-1"}'
        values: '1700000000x20'
      - series: 'etcd_server_quota_backend_bytes{job="etcd",cluster="etcd-cluster-1",member="etcd-1"}'
        values: '2000000000x20'
      - series: 'etcd_mvcc_db_total_size_in_bytes{job="etcd",cluster="etcd-cluster-1",member="etcd-2"}'
        values: '1000000000x20'
      - series: 'etcd_server_quota_backend_bytes{job="etcd",cluster="etcd-cluster-1",member="etcd-2"}'
        values: '2000000000x20'
      - series: 'etcd_server_leader_changes_seen_total{job="etcd",cluster="etcd-cluster-1",member="etcd-1"}'
        values: '1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1'
      - series: 'etcd_server_leader_changes_seen_total{job="etcd",cluster="etcd-cluster-1",member="etcd-2"}'
        values: '1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20'
    alert_rule_test:
      - eval_time: 5m
        alertname: EtcdDatabaseNearQuota
        exp_alerts: []
      - eval_time: 12m
        alertname: EtcdDatabaseNearQuota
        exp_alerts:
          - exp_labels: {severity: warning, job: etcd, cluster: etcd-cluster-1, member: etcd-1}
            exp_annotations:
              summary: "etcd member etcd-1 of etcd-cluster-1: the database is 85% of its quota; compact and defragment, or raise etcd.backendQuota, before writes stop with NOSPACE"
      - eval_time: 15m
        alertname: EtcdFrequentLeaderChanges
        exp_alerts:
          - exp_labels: {severity: warning, job: etcd, cluster: etcd-cluster-1, member: etcd-2}
            exp_annotations:
              summary: "etcd member etcd-2 of etcd-cluster-1 saw more than 3 leader changes in 15 minutes: the network or the disks are too slow for the election timeout"
  - interval: 5m
    input_series:
      - series: 'etcdimg_backup_last_success_timestamp_seconds{job="etcdimg",cluster="etcd-cluster-1",member="etcd-1"}'
        values: '0x40'
      - series: 'etcdimg_backup_last_success_timestamp_seconds{job="etcdimg",cluster="etcd-cluster-1",member="etcd-2"}'
        values: '0x40'
      - series: 'etcdimg_backup_interval_seconds{job="etcdimg",cluster="etcd-cluster-1",member="etcd-1"}'
        values: '3600x40'
      - series: 'etcdimg_backup_interval_seconds{job="etcdimg",cluster="etcd-cluster-1",member="etcd-2"}'
        values: '3600x40'
    alert_rule_test:
      - eval_time: 1h
        alertname: EtcdBackupTooOld
        exp_alerts: []
      - eval_time: 2h20m
        alertname: EtcdBackupTooOld
        exp_alerts:
          - exp_labels: {severity: critical, cluster: etcd-cluster-1}
            exp_annotations:
              summary: "the last verified backup of etcd-cluster-1 is 2h 20m 0s old, over two backup intervals: see the members' consoles and etcdimg_backup_failures_total"
  # A member reports a record dated in the future (its clock runs far
  # ahead, or a client wrote it): EtcdBackupTooOld still sees the other
  # member's age, and EtcdBackupRecordFromFuture fires.
  - interval: 5m
    input_series:
      - series: 'etcdimg_backup_last_success_timestamp_seconds{job="etcdimg",cluster="etcd-cluster-1",member="etcd-1"}'
        values: '0x40'
      - series: 'etcdimg_backup_last_success_timestamp_seconds{job="etcdimg",cluster="etcd-cluster-1",member="etcd-2"}'
        values: '10000000000x40'
      - series: 'etcdimg_backup_interval_seconds{job="etcdimg",cluster="etcd-cluster-1",member="etcd-1"}'
        values: '3600x40'
    alert_rule_test:
      - eval_time: 2h20m
        alertname: EtcdBackupTooOld
        exp_alerts:
          - exp_labels: {severity: critical, cluster: etcd-cluster-1}
            exp_annotations:
              summary: "the last verified backup of etcd-cluster-1 is 2h 20m 0s old, over two backup intervals: see the members' consoles and etcdimg_backup_failures_total"
      - eval_time: 0m
        alertname: EtcdBackupRecordFromFuture
        exp_alerts: []
      - eval_time: 10m
        alertname: EtcdBackupRecordFromFuture
        exp_alerts:
          - exp_labels: {severity: critical, cluster: etcd-cluster-1}
            exp_annotations:
              summary: &future "a backup record of etcd-cluster-1 is dated in the future (a member's clock runs ahead, or a client wrote /etcdimg/backup/last): fix the members' clocks (NTP); see the members' consoles and etcdimg_backup_future_records_total"
  # Backups are current, but a member found a record from the future
  # (and backed up anyway): the alert fires, and clears an hour later.
  - interval: 5m
    input_series:
      - series: 'etcdimg_backup_last_success_timestamp_seconds{job="etcdimg",cluster="etcd-cluster-1",member="etcd-1"}'
        values: '0+300x40'
      - series: 'etcdimg_backup_future_records_total{job="etcdimg",cluster="etcd-cluster-1",member="etcd-1"}'
        values: '0 0 1x40'
      - series: 'etcdimg_backup_future_records_total{job="etcdimg",cluster="etcd-cluster-1",member="etcd-2"}'
        values: '0x40'
    alert_rule_test:
      - eval_time: 5m
        alertname: EtcdBackupRecordFromFuture
        exp_alerts: []
      - eval_time: 20m
        alertname: EtcdBackupRecordFromFuture
        exp_alerts:
          - exp_labels: {severity: critical, cluster: etcd-cluster-1}
            exp_annotations:
              summary: *future
      - eval_time: 2h
        alertname: EtcdBackupRecordFromFuture
        exp_alerts: []
  - interval: 1m
    input_series:
      - series: 'etcdimg_certificate_expiry_timestamp_seconds{job="etcdimg",cluster="etcd-cluster-1",member="etcd-1",certificate="member"}'
        values: '2000000x100'
      - series: 'etcdimg_certificate_expiry_timestamp_seconds{job="etcdimg",cluster="etcd-cluster-1",member="etcd-1",certificate="ca"}'
        values: '1000000000x100'
    alert_rule_test:
      - eval_time: 30m
        alertname: EtcdCertificateExpiring
        exp_alerts: []
      - eval_time: 70m
        alertname: EtcdCertificateExpiring
        exp_alerts:
          - exp_labels: {severity: warning, job: etcdimg, cluster: etcd-cluster-1, member: etcd-1, certificate: member}
            exp_annotations:
              summary: "the member certificate of etcd-1 (etcd-cluster-1) expires within 30 days: rotate it and roll the images"
`

// TestAlertRulesPassPromtool checks the rendered rules and the scrape
// config that loads them with Debian's promtool, and runs promtool's own
// unit tests of every alert.
func TestAlertRulesPassPromtool(t *testing.T) {
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Fatal("promtool is missing: `make deps` installs Debian's prometheus")
	}
	c := spec.Default(3)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rules, err := Rules(c)
	if err != nil {
		t.Fatal(err)
	}
	prom, err := Prometheus(c, nil, outdir.Layout(dir))
	if err != nil {
		t.Fatal(err)
	}
	// With metrics.tls, the scrape config names the scraper's pair,
	// which promtool finds and loads.
	tc := *c
	tc.Metrics.TLS = true
	set, err := pki.Ensure(&tc, filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "pki"), 0o700)
	for _, f := range set.Files() {
		os.WriteFile(filepath.Join(dir, "pki", f.Name), f.Data, f.Mode)
	}
	promTLS, err := Prometheus(&tc, nil, outdir.Layout(dir))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(promTLS), "scheme: https") || !strings.Contains(string(promTLS), "cert_file: "+filepath.Join(dir, "pki", pki.PrometheusCert)) {
		t.Errorf("metrics.tls scrape config:\n%s", promTLS)
	}
	os.WriteFile(filepath.Join(dir, "prometheus-tls.yml"), promTLS, 0o644)
	os.WriteFile(filepath.Join(dir, RulesFile), rules, 0o644)
	os.WriteFile(filepath.Join(dir, "prometheus.yml"), prom, 0o644)
	os.WriteFile(filepath.Join(dir, "tests.yml"), []byte(ruleTests), 0o644)
	for _, args := range [][]string{
		{"check", "rules", RulesFile},
		{"check", "config", "prometheus.yml"},
		{"check", "config", "prometheus-tls.yml"},
		{"test", "rules", "tests.yml"},
	} {
		cmd := exec.Command("promtool", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, a := range Alerts(c) {
		if !strings.Contains(ruleTests, "alertname: "+a.Alert) {
			t.Errorf("alert %s has no promtool test", a.Alert)
		}
	}
	// The alerts and the backup service agree on what is from the
	// future.
	if time.Duration(futureSkew)*time.Second != backup.MaxSkew {
		t.Errorf("the alerts' futureSkew is %ds, backup.MaxSkew %s", futureSkew, backup.MaxSkew)
	}
}
