package backupd

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"etcdimg/internal/backup"
	"etcdimg/internal/slot"
)

// metrics are what the service has seen: the cluster's last backup (from
// the record every member reads) and this member's own counts.
type metrics struct {
	started   time.Time
	last      *backup.Manifest
	successes map[string]int
	failures  map[string]int
	// futureRecords counts the records dated after this member's clock
	// (beyond backup.MaxSkew) that it found and did not count.
	futureRecords int
}

func (s *Service) setLast(m *backup.Manifest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m != nil {
		s.metrics.last = m
	}
}

func (s *Service) ok(target string) { s.count(&s.metrics.successes, target) }

func (s *Service) fail(target string) { s.count(&s.metrics.failures, target) }

func (s *Service) count(m *map[string]int, target string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if *m == nil {
		*m = map[string]int{}
	}
	(*m)[target]++
}

// Certificates are the PEM files whose expiry the metrics report, by the
// label they get.
type Certificates map[string]string

// WriteMetrics writes the service's metrics in Prometheus' text format.
// The last-success time is the cluster's (every member reports the same
// record); before the first backup it is when this service started, so
// that a new cluster does not alert before its first interval is over.
func (s *Service) WriteMetrics(w io.Writer, certs Certificates) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gauge := func(name, help string) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
	}
	gauge("etcdimg_backup_interval_seconds", "The spec's backup interval.")
	fmt.Fprintf(w, "etcdimg_backup_interval_seconds %d\n", s.Config.IntervalSeconds)
	last := s.metrics.started
	if m := s.metrics.last; m != nil {
		last = m.Time
	}
	gauge("etcdimg_backup_last_success_timestamp_seconds", "When the cluster's last verified backup was taken (Unix time); before the first, when this service started.")
	fmt.Fprintf(w, "etcdimg_backup_last_success_timestamp_seconds %d\n", last.Unix())
	if m := s.metrics.last; m != nil {
		gauge("etcdimg_backup_last_size_bytes", "Size of the cluster's last verified backup.")
		fmt.Fprintf(w, "etcdimg_backup_last_size_bytes %d\n", m.Size)
		gauge("etcdimg_backup_last_revision", "Revision of the cluster's last verified backup.")
		fmt.Fprintf(w, "etcdimg_backup_last_revision %d\n", m.Revision)
		gauge("etcdimg_backup_last_duration_seconds", "Time to save and verify the cluster's last backup.")
		fmt.Fprintf(w, "etcdimg_backup_last_duration_seconds %.3f\n", m.Seconds)
	}
	targets := []string{"local"}
	if s.S3 != nil {
		targets = append(targets, "s3")
	}
	for _, c := range []struct {
		name, help string
		m          map[string]int
	}{
		{"etcdimg_backup_success_total", "Backups this member stored, by target.", s.metrics.successes},
		{"etcdimg_backup_failures_total", "Backups this member failed to take or store, by target.", s.metrics.failures},
	} {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n", c.name, c.help, c.name)
		for _, t := range targets {
			fmt.Fprintf(w, "%s{target=%q} %d\n", c.name, t, c.m[t])
		}
	}
	fmt.Fprintf(w, "# HELP %[1]s %[2]s\n# TYPE %[1]s counter\n%[1]s %[3]d\n", "etcdimg_backup_future_records_total",
		"Backup records this member found dated after its own clock (beyond a 5-minute skew); each was ignored and a backup taken.", s.metrics.futureRecords)
	writeSlotMetrics(w, s.SlotStatus)
	if s.Maintenance != nil {
		s.Maintenance.WriteMetrics(w)
	}
	var names []string
	for n := range certs {
		names = append(names, n)
	}
	sort.Strings(names)
	gauge("etcdimg_certificate_expiry_timestamp_seconds", "When a certificate this member uses expires (Unix time).")
	for _, n := range names {
		if exp, err := certExpiry(certs[n]); err == nil {
			fmt.Fprintf(w, "etcdimg_certificate_expiry_timestamp_seconds{certificate=%q} %d\n", n, exp.Unix())
		}
	}
}

// MetricsHandler serves WriteMetrics.
func (s *Service) MetricsHandler(certs Certificates) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		s.WriteMetrics(w, certs)
	})
}

func certExpiry(path string) (time.Time, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return time.Time{}, fmt.Errorf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return time.Time{}, err
	}
	return c.NotAfter, nil
}

func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// writeSlotMetrics writes the boot slot the member runs, from PID 1's
// record at path: etcdimg_image_info names it (its ID, digest, state and
// versions), etcdimg_slot_rolled_back is 1 when the member came back
// from an update whose tries were spent.
func writeSlotMetrics(w io.Writer, path string) {
	if path == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var st slot.Status
	if json.Unmarshal(b, &st) != nil {
		return
	}
	r := st.Running
	etcd, kernel := "", ""
	if r.Manifest != nil {
		etcd, kernel = r.Manifest.Etcd, r.Manifest.Kernel
	}
	fmt.Fprintf(w, "# HELP etcdimg_image_info The boot slot this member runs: its ID, generation, digest (images/manifest.json's slot_digest), state and versions.\n# TYPE etcdimg_image_info gauge\n")
	fmt.Fprintf(w, "etcdimg_image_info{slot=%q,gen=\"%d\",digest=%q,state=%q,etcd=%q,kernel=%q} 1\n", r.ID, r.Gen, r.Digest, r.State, etcd, kernel)
	fmt.Fprintf(w, "# HELP etcdimg_slot_rolled_back 1 when this member runs an older slot than an update whose boot tries were spent: it rolled back.\n# TYPE etcdimg_slot_rolled_back gauge\n")
	if rb := st.RolledBack; rb != nil {
		fmt.Fprintf(w, "etcdimg_slot_rolled_back{from=%q} 1\n", rb.ID)
	} else {
		fmt.Fprintf(w, "etcdimg_slot_rolled_back 0\n")
	}
}
