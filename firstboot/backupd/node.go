package backupd

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdimg/firstboot/maintd"
	"etcdimg/ignition/ign"
	"etcdimg/internal/backup"
	"etcdimg/internal/layout"
	"etcdimg/internal/maintain"
)

// Main is the etcd-backup program inside the appliance: the service for
// this member, from the files its config wrote.
func Main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "etcd-backup: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	s, serverTLS, ip, err := Load("/")
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	certs := Certificates{"member": ign.CertPath, "ca": ign.CACertPath}
	for _, addr := range []string{ip, "127.0.0.1"} {
		ln, err := net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(layout.NodeMetricsPort)))
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		// With metrics.tls, the member's address is served like etcd's
		// own metrics there: mTLS, a client certificate of the CA
		// required. Loopback stays plain.
		if s.MetricsTLS && addr == ip {
			ln = tls.NewListener(ln, serverTLS)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", s.MetricsHandler(certs))
		go (&http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}).Serve(ln)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(layout.BackupPort)))
	if err != nil {
		return fmt.Errorf("backup API: %w", err)
	}
	go (&http.Server{Handler: APIHandler(s.Dir, s.Readers...), ReadHeaderTimeout: 5 * time.Second}).Serve(tls.NewListener(ln, serverTLS))
	where := "the data disk"
	if s.S3 != nil {
		where += " and " + s.S3.Where()
	}
	s.Log("backup: every %s for the cluster, keeping %d, to %s; metrics on :%d, backups over mTLS on :%d", time.Duration(s.Config.IntervalSeconds)*time.Second, s.Config.Retain, where, layout.NodeMetricsPort, layout.BackupPort)
	if m := s.Maintenance; m != nil {
		s.Log("maintenance: every %s, defragmentation at %d%% of the quota free, NOSPACE recovery", m.Check, m.Policy.FreePercent)
		go m.Run(ctx)
	}
	return s.Run(ctx)
}

// Load builds the service from a member's files under root: etcd.conf
// for its name, address and certificate, backup.json, and the S3
// credentials and CA. It returns the member's server TLS config (for the
// backups API, client certificates from the CA required) and IP too.
func Load(root string) (*Service, *tls.Config, string, error) {
	me, err := ign.ReadRunningMember(root)
	if err != nil {
		return nil, nil, "", err
	}
	env := me.Env
	var cfg ign.BackupConfig
	b, err := os.ReadFile(filepath.Join(root, layout.BackupConfigPath))
	if err != nil {
		return nil, nil, "", err
	}
	if err := json.Unmarshal(b, &cfg); err != nil || cfg.IntervalSeconds < 1 {
		return nil, nil, "", fmt.Errorf("%s: not a backup config (%v)", layout.BackupConfigPath, err)
	}
	tlsCfg, serverTLS, err := ign.MemberTLS(root, env["ETCD_CERT_FILE"], env["ETCD_KEY_FILE"], env["ETCD_TRUSTED_CA_FILE"])
	if err != nil {
		return nil, nil, "", err
	}
	u, err := url.Parse(strings.Split(env["ETCD_ADVERTISE_CLIENT_URLS"], ",")[0])
	if err != nil || u.Host == "" {
		return nil, nil, "", fmt.Errorf("ETCD_ADVERTISE_CLIENT_URLS %q: %v", env["ETCD_ADVERTISE_CLIENT_URLS"], err)
	}
	s := &Service{
		Member:   me.Name,
		Endpoint: u.String(),
		Client:   clientv3.Config{Endpoints: []string{u.String()}, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()},
		Config:   cfg,
		Dir:      filepath.Join(root, layout.BackupDir),
		Quota:    me.Quota,
		// etcd.conf says whether metrics are served over mTLS.
		MetricsTLS: strings.HasPrefix(env["ETCD_LISTEN_METRICS_URLS"], "https://"),
		// etcd needs the CPU while it starts; a backup can wait.
		FirstDelay: 15 * time.Second,
		// The backups API serves root and the members, whose names
		// the peer port allows (ETCD_PEER_CERT_ALLOWED_CN).
		Readers:    Readers(me.Names),
		SlotStatus: filepath.Join(root, layout.SlotStatusPath),
		Log:        func(f string, a ...any) { fmt.Printf(f+"\n", a...) },
	}
	if m := cfg.Maintenance; m != nil && m.CheckSeconds > 0 {
		interval := time.Duration(cfg.IntervalSeconds) * time.Second
		s.Maintenance = &maintd.Service{
			Member: s.Member, Endpoint: s.Endpoint, Client: s.Client,
			Policy: maintain.Policy{FreePercent: m.DefragFreePercent},
			Check:  time.Duration(m.CheckSeconds) * time.Second,
			// Two intervals: the backup before last may be late by a
			// tick, and a defragmentation should not wait on that.
			BackupWithin: 2*interval + backup.MaxSkew,
			Log:          s.Log,
		}
	}
	if cfg.S3 != nil {
		creds, err := os.ReadFile(filepath.Join(root, layout.S3CredentialsPath))
		if err != nil {
			return nil, nil, "", fmt.Errorf("s3 credentials: %w", err)
		}
		var ca []byte
		if cfg.S3.CA {
			if ca, err = os.ReadFile(filepath.Join(root, layout.S3CAPath)); err != nil {
				return nil, nil, "", fmt.Errorf("s3 CA: %w", err)
			}
		}
		up, err := backup.NewS3(*cfg.S3, cfg.Cluster, creds, ca)
		if err != nil {
			return nil, nil, "", err
		}
		s.S3 = up
	}
	return s, serverTLS, u.Hostname(), nil
}

// Readers are the certificate CNs that may list and fetch backups over
// the backups API: the admin's (root) and the members' (their names).
// A backup is the whole keyspace: an application client, the scraper
// and the Kubernetes API server, whose certificates the same CA signed,
// may read only what etcd's roles give them, and get none.
func Readers(members []string) []string {
	out := []string{layout.AdminCN}
	for _, m := range members {
		if m = strings.TrimSpace(m); m != "" && !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

// APIHandler serves the backups in dir (the list, and each snapshot) to
// a client whose verified certificate's CN is one of readers; any other
// gets 403.
func APIHandler(dir string, readers ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, ok := strings.CutPrefix(r.URL.Path, backup.APIPrefix)
		if !ok || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		if cn, ok := verifiedCN(r); !ok || !slices.Contains(readers, cn) {
			http.Error(w, fmt.Sprintf("forbidden: backups are served to the admin certificate (CN %s) and the members' only, not to CN %q", layout.AdminCN, cn), http.StatusForbidden)
			return
		}
		if name == "" {
			ms, err := backup.List(dir)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(ms)
			return
		}
		f, m, err := backup.Open(dir, name)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(m.Size, 10))
		w.Header().Set("X-Etcdimg-Sha256", m.SHA256)
		io.Copy(w, f)
	})
}

// verifiedCN is the CN of the client certificate that TLS verified for
// r, if any.
func verifiedCN(r *http.Request) (string, bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return "", false
	}
	return r.TLS.VerifiedChains[0][0].Subject.CommonName, true
}
