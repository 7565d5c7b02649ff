package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"etcdimg/internal/backup"
	"etcdimg/internal/snapshot"
	"etcdimg/internal/spec"
)

// LastBackup reads the cluster's last backup record (nil before the
// first backup).
func (e *Etcd) LastBackup(ctx context.Context) (*backup.Manifest, error) {
	cli, err := e.Client()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return backup.LastBackup(ctx, cli)
}

// LastBackupLine says when the cluster's last verified backup was taken,
// from the record the members keep in etcd; interval is the spec's.
func (e *Etcd) LastBackupLine(ctx context.Context, interval spec.Duration) string {
	m, err := e.LastBackup(ctx)
	switch {
	case err != nil:
		return "last backup: unknown (etcd: " + err.Error() + ")"
	case m == nil:
		return fmt.Sprintf("last backup: none yet (one every %s for the cluster)", interval)
	}
	return fmt.Sprintf("last backup: %s, %s ago, by %s: revision %d, %d keys, %.1f MiB, verified, in %s", m.Name, time.Since(m.Time).Round(time.Second), m.Member, m.Revision, m.Keys, float64(m.Size)/(1<<20), strings.Join(m.Targets, " and "))
}

// NodeBackups reaches the members' backup APIs (layout.BackupPort) over
// mTLS with one client certificate.
type NodeBackups struct {
	Members map[string]string // member name → https://host:port
	TLS     *tls.Config
}

// MemberBackups is what one member's data disk holds.
type MemberBackups struct {
	Member  string
	Backups []backup.Manifest
	Err     error
}

func (n *NodeBackups) http() *http.Client {
	return &http.Client{Timeout: 10 * time.Minute, Transport: &http.Transport{TLSClientConfig: n.TLS, ResponseHeaderTimeout: 10 * time.Second}}
}

// List asks every member, in parallel, for the backups on its data disk.
func (n *NodeBackups) List(ctx context.Context) []MemberBackups {
	var out []MemberBackups
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, base := range n.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mb := MemberBackups{Member: name}
			mb.Backups, mb.Err = n.list(ctx, base)
			mu.Lock()
			out = append(out, mb)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.SortFunc(out, func(a, b MemberBackups) int { return strings.Compare(a.Member, b.Member) })
	return out
}

func (n *NodeBackups) list(ctx context.Context, base string) ([]backup.Manifest, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+backup.APIPrefix, nil)
	resp, err := n.http().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s", resp.Status)
	}
	var ms []backup.Manifest
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&ms); err != nil {
		return nil, err
	}
	return ms, nil
}

// Get finds backup name on whichever member holds it, downloads it to a
// temporary file beside path, verifies it against its manifest and with
// snapshot.Verify, and only then links it into place. It never
// overwrites path.
func (n *NodeBackups) Get(ctx context.Context, name, path string) (backup.Manifest, snapshot.Info, error) {
	if _, err := os.Lstat(path); err == nil {
		return backup.Manifest{}, snapshot.Info{}, fmt.Errorf("%s exists; name a new file", path)
	}
	for _, mb := range n.List(ctx) {
		for _, m := range mb.Backups {
			if m.Name != name {
				continue
			}
			info, err := fetchVerified(path, m.SHA256, func(w io.Writer) error {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.Members[mb.Member]+backup.APIPrefix+url.PathEscape(name), nil)
				resp, err := n.http().Do(req)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("%s: %s", mb.Member, resp.Status)
				}
				_, err = io.Copy(w, resp.Body)
				return err
			})
			return m, info, err
		}
	}
	return backup.Manifest{}, snapshot.Info{}, fmt.Errorf("no member holds a backup named %s; `etcdimg backups list` shows them", name)
}

// fetchVerified writes what fetch yields to a temporary file beside
// path, checks its SHA-256 against want and verifies it as a snapshot,
// then links it to path (never over an existing file).
func fetchVerified(path, want string, fetch func(io.Writer) error) (snapshot.Info, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return snapshot.Info{}, err
	}
	defer os.Remove(tmp.Name())
	err = fetch(tmp)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return snapshot.Info{}, fmt.Errorf("download: %w", err)
	}
	info, err := snapshot.Verify(tmp.Name(), false)
	if err != nil {
		return info, err
	}
	if want != "" && info.SHA256 != want {
		return info, fmt.Errorf("the download has SHA-256 %s, its manifest says %s; not kept", info.SHA256, want)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		return info, err
	}
	info.Path = path
	return info, nil
}

// FetchVerified is fetchVerified for other sources (an S3 object).
func FetchVerified(path, want string, fetch func(io.Writer) error) (snapshot.Info, error) {
	if _, err := os.Lstat(path); err == nil {
		return snapshot.Info{}, fmt.Errorf("%s exists; name a new file", path)
	}
	return fetchVerified(path, want, fetch)
}
