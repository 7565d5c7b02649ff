package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdimg/internal/spec"
)

// TestMembersLookAfterTheirDatabases is docs/maintenance.md on three
// members whose 640 MiB data disks give them a quota of 127 MiB (the
// disk less 512 MiB), under an independent writer all along:
//
//   - 50,000 keys written then deleted: once etcd's periodic compaction
//     has freed their pages, every member defragments itself (scheduled,
//     one at a time) and its database file shrinks;
//   - a writer fills the quota until etcd answers "database space
//     exceeded": `etcdimg health` exits 1 naming NOSPACE; the keys are
//     deleted, and the members compact, defragment and disarm by
//     themselves, within a bound, and writes resume;
//   - live data fills the quota: the alarm stays and each member says
//     so; each member in turn is stopped and started with a larger data
//     disk (1 GiB), grows its file system and its quota (511 MiB), and
//     once the last has,
//     the alarm clears by itself.
//
// No acknowledged write of the independent writer is lost.
func TestMembersLookAfterTheirDatabases(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	c := spec.Default(3)
	c.Backup.Interval = spec.Duration(time.Minute)
	c.Etcd.AutoCompactionRetention = spec.Duration(time.Minute)
	c.Maintenance = spec.Maintenance{Check: spec.Duration(10 * time.Second), DefragFreePercent: 5}
	b, err := spec.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	specPath := filepath.Join(work, "etcdimg.yaml")
	os.WriteFile(specPath, b, 0o644)
	u := upBuiltWith(t, work, []string{"--data-size", "640MiB"}, "--config", specPath)
	w := startWriter(t, u, "/load/maintenance")
	cli := u.client(t, 0, u.admin)
	ctx := context.Background()
	quota := dbStatus(t, u)[0].DbSizeQuota
	if quota < 100<<20 || quota > 140<<20 {
		t.Fatalf("quota %d, want about 127 MiB on a 640 MiB disk", quota)
	}

	// Scheduled defragmentation.
	value := strings.Repeat("v", 200)
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Minute)
	for i := 0; i < 50000; i += 100 {
		var ops []clientv3.Op
		for j := i; j < i+100; j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/churn/%06d", j), value))
		}
		if _, err := cli.Txn(pctx).Then(ops...).Commit(); err != nil {
			t.Fatalf("put /churn/%06d…: %v", i, err)
		}
	}
	pcancel()
	if _, err := cli.Delete(ctx, "/churn/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	before := dbStatus(t, u)
	start := time.Now()
	waitUntil(t, u, 6*time.Minute, "every member defragmented on schedule", func() bool {
		for _, m := range u.state.Members {
			if !strings.Contains(consoleOf(u, m.Name), "defrag: "+m.Name+": database ") {
				return false
			}
		}
		return true
	})
	after := dbStatus(t, u)
	for i, m := range u.state.Members {
		t.Logf("%s: database %d → %d bytes (%d in use)", m.Name, before[i].DbSize, after[i].DbSize, after[i].DbSizeInUse)
		if after[i].DbSize >= before[i].DbSize {
			t.Errorf("%s's database did not shrink: %d → %d bytes", m.Name, before[i].DbSize, after[i].DbSize)
		}
		t.Logf("%s console: %s", m.Name, grepLines(consoleOf(u, m.Name), "defrag: "))
	}
	t.Logf("scheduled defragmentation of every member within %s of the delete", time.Since(start).Round(time.Second))

	// NOSPACE from history: deleting the keys is enough.
	fillQuota(t, cli, "/fill/")
	stdout, stderr, code := etcdimg(t, work, "health", "--out", u.out)
	if code != 1 || !strings.Contains(stdout+stderr, "NOSPACE") {
		t.Errorf("health under NOSPACE: exit %d: %s %s", code, stdout, stderr)
	}
	if _, err := cli.Delete(ctx, "/fill/", clientv3.WithPrefix()); err != nil {
		t.Fatalf("delete under NOSPACE: %v", err)
	}
	start = time.Now()
	waitUntil(t, u, 4*time.Minute, "NOSPACE disarmed by the members", func() bool { return len(alarms(t, cli)) == 0 })
	t.Logf("NOSPACE disarmed by the members %s after the delete", time.Since(start).Round(time.Second))
	if _, err := cli.Put(ctx, "/after-nospace", "ok"); err != nil {
		t.Errorf("writes after the members disarmed: %v", err)
	}

	// NOSPACE from live data: the alarm stays until the disks grow.
	fillQuota(t, cli, "/live/")
	time.Sleep(40 * time.Second) // four rounds
	if len(alarms(t, cli)) == 0 {
		t.Fatal("the members disarmed NOSPACE while live data fills the quota")
	}
	said := false
	for _, m := range u.state.Members {
		said = said || strings.Contains(consoleOf(u, m.Name), "NOSPACE stays: ")
	}
	if !said {
		t.Error("no member said that live data keeps NOSPACE")
	}
	for _, m := range u.state.Members {
		if _, stderr, code := etcdimg(t, work, "stop", m.Name, "--out", u.out); code != 0 {
			t.Fatalf("stop %s: %s", m.Name, stderr)
		}
		stdout, stderr, code := etcdimg(t, work, "start", m.Name, "--data-size", "1GiB", "--out", u.out)
		t.Logf("start %s --data-size 1GiB:\n%s", m.Name, stdout)
		if code != 0 {
			t.Fatalf("start %s --data-size 1GiB: %s", m.Name, stderr)
		}
		u.reload(t)
		waitUntil(t, u, 4*time.Minute, m.Name+" back with its larger disk", func() bool {
			return strings.Contains(consoleOf(u, m.Name), "its file system was resized online") && len(healthyMembers(t, u)) == 3
		})
		t.Logf("%s: %s", m.Name, grepLines(consoleOf(u, m.Name), "data disk", "backend quota"))
	}
	waitUntil(t, u, 3*time.Minute, "NOSPACE disarmed once every quota grew", func() bool { return len(alarms(t, cli)) == 0 })
	for i, s := range dbStatus(t, u) {
		if s.DbSizeQuota < 500<<20 {
			t.Errorf("%s's quota is %d after its disk grew", u.state.Members[i].Name, s.DbSizeQuota)
		}
	}
	if _, err := cli.Put(ctx, "/after-growth", "ok"); err != nil {
		t.Errorf("writes after the disks grew: %v", err)
	}
	w.Stop()
	runs, acked, failed := w.outages()
	t.Logf("writer: %d writes acknowledged, %d failed in %d outages", acked, failed, runs)
	checkAcked(t, u, w)
}

// dbStatus is every member's status, in state order.
func dbStatus(t *testing.T, u *upCluster) []*clientv3.StatusResponse {
	t.Helper()
	var out []*clientv3.StatusResponse
	for i, m := range u.state.Members {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := u.client(t, i, u.admin).Status(ctx, fmt.Sprintf("https://127.0.0.1:%d", m.Client))
		cancel()
		if err != nil {
			t.Fatalf("status of %s: %v", m.Name, err)
		}
		out = append(out, st)
	}
	return out
}

// healthyMembers are the members that answer their status.
func healthyMembers(t *testing.T, u *upCluster) []string {
	var out []string
	for i, m := range u.state.Members {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{fmt.Sprintf("https://127.0.0.1:%d", m.Client)}, TLS: u.admin, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err == nil {
			if _, err = cli.Status(ctx, fmt.Sprintf("https://127.0.0.1:%d", m.Client)); err == nil {
				out = append(out, u.state.Members[i].Name)
			}
			cli.Close()
		}
		cancel()
	}
	return out
}

func alarms(t *testing.T, cli *clientv3.Client) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := cli.AlarmList(ctx)
	if err != nil {
		t.Logf("alarm list: %v", err)
		return []string{"unknown"}
	}
	var out []string
	for _, a := range r.Alarms {
		out = append(out, a.Alarm.String())
	}
	return out
}

// fillQuota writes 64 KiB values under prefix until etcd answers
// "database space exceeded".
func fillQuota(t *testing.T, cli *clientv3.Client, prefix string) {
	t.Helper()
	value := strings.Repeat("x", 64<<10)
	for i := 0; i < 4000; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := cli.Put(ctx, fmt.Sprintf("%s%05d", prefix, i), value)
		cancel()
		if errors.Is(err, rpctypes.ErrNoSpace) || (err != nil && strings.Contains(err.Error(), "database space exceeded")) {
			t.Logf("%s: database space exceeded after %d values", prefix, i)
			return
		}
		if err != nil {
			t.Fatalf("put %s%05d: %v", prefix, i, err)
		}
	}
	t.Fatal("the quota never filled")
}

// grepLines are s's lines holding any of parts, joined.
func grepLines(s string, parts ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, p := range parts {
			if strings.Contains(l, p) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
