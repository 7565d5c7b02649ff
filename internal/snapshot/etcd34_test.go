package snapshot

import (
	"context"
	"etcdimg/internal/etcdtest"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// debianEtcd unpacks Debian's etcd 3.4 packages (etcd-server and
// etcd-client, which `make test-tools` downloads into .cache/test-deb)
// and returns the etcd and etcdctl binaries.
func debianEtcd(t *testing.T) (etcd, etcdctl string) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	debs := filepath.Join(filepath.Dir(file), "..", "..", ".cache", "test-deb")
	dir := t.TempDir()
	for _, pkg := range []string{"etcd-server", "etcd-client"} {
		m, _ := filepath.Glob(filepath.Join(debs, pkg+"_3.4*.deb"))
		if len(m) == 0 {
			t.Fatalf("Debian's %s 3.4 package is not in %s: run `make test-tools`", pkg, debs)
		}
		if out, err := exec.Command("dpkg-deb", "-x", m[0], dir).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb -x %s: %v\n%s", m[0], err, out)
		}
	}
	return filepath.Join(dir, "usr", "bin", "etcd"), filepath.Join(dir, "usr", "bin", "etcdctl")
}

// TestRestoreAnEtcd34Snapshot: a snapshot that Debian's etcdctl 3.4
// saved from Debian's etcd 3.4 verifies and restores into a cluster of
// the etcd this project builds, keys and values intact.
func TestRestoreAnEtcd34Snapshot(t *testing.T) {
	etcd, etcdctl := debianEtcd(t)
	cu, pu := freeURL(t), freeURL(t)
	cmd := exec.Command(etcd, "--name", "old", "--data-dir", t.TempDir(),
		"--listen-client-urls", cu.String(), "--advertise-client-urls", cu.String(),
		"--listen-peer-urls", pu.String(), "--initial-advertise-peer-urls", pu.String(),
		"--initial-cluster", "old="+pu.String())
	logPath := filepath.Join(t.TempDir(), "etcd34.log")
	logf, _ := os.Create(logPath)
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{cu.String()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range 200 {
		for {
			_, err := cli.Put(ctx, fmt.Sprintf("/old/%03d", i), fmt.Sprintf("v%d", i))
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				b, _ := os.ReadFile(logPath)
				t.Fatalf("etcd 3.4 does not take writes: %v\n%s", err, b)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	snap := filepath.Join(t.TempDir(), "etcd34.db")
	save := exec.Command(etcdctl, "--endpoints", cu.String(), "snapshot", "save", snap)
	save.Env = append(os.Environ(), "ETCDCTL_API=3")
	if out, err := save.CombinedOutput(); err != nil {
		t.Fatalf("etcdctl 3.4 snapshot save: %v\n%s", err, out)
	}
	info, err := Verify(snap, false)
	if err != nil || info.TotalKeys != 200 {
		t.Fatalf("verify: %+v %v", info, err)
	}

	nu, npu := freeURL(t), freeURL(t)
	m := Member{Name: "etcd-1", PeerURL: npu.String(), InitialCluster: "etcd-1=" + npu.String(), Token: "from-34"}
	dataDir := filepath.Join(t.TempDir(), "etcd")
	if _, err := Restore(snap, false, m, dataDir); err != nil {
		t.Fatal(err)
	}
	etcdtest.Start(t, func(cfg *embed.Config) {
		cfg.Name, cfg.Dir = m.Name, dataDir
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{nu}, []url.URL{nu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{npu}, []url.URL{npu}
		cfg.InitialCluster, cfg.InitialClusterToken = m.InitialCluster, m.Token
	})
	ncli, err := clientv3.New(clientv3.Config{Endpoints: []string{nu.String()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer ncli.Close()
	r, err := ncli.Get(ctx, "/old/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 200 || string(r.Kvs[7].Value) != "v7" {
		t.Errorf("restored %d keys (want 200), /old/007 = %q", len(r.Kvs), r.Kvs[7].Value)
	}
}
