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

// BenchmarkMaintenance is docs/maintenance.md on three
// members whose 576 MiB data disks give them etcd's 64 MiB floor as a
// quota (the disk less 512 MiB is less), with 512 MiB of RAM each (etcd
// keeps the raft log's 64 KiB entries in memory), under an independent
// writer all along:
//
//   - 200 keys of 64 KiB written then deleted: once etcd's periodic compaction
//     has freed their pages, every member defragments itself (scheduled,
//     one at a time) and its database file shrinks;
//   - a writer fills the quota until etcd answers "database space
//     exceeded": `etcdimg health` exits 1 naming NOSPACE; the keys are
//     deleted, and the members compact, defragment and disarm by
//     themselves, within a bound, and writes resume;
//   - live data fills the quota: the alarm stays and each member says
//     so; each member in turn is stopped and started with a larger data
//     disk (1 GiB), grows its file system and its quota (over 400 MiB), and
//     once the last has,
//     the alarm clears by itself.
//
// No acknowledged write of the independent writer is lost.
//
// It runs in `make bench` (about 8.5 minutes alone under TCG: two quota
// fills and three reboots with larger disks), not in `make test`, which
// it would take past 45 minutes; its figures are the bench's.
func BenchmarkMaintenance(bm *testing.B) {
	t := bm
	work := t.TempDir()
	c := spec.Default(3)
	// The backup interval stays an hour: the first backup, at boot, is
	// the recent one scheduled defragmentation waits for, and none
	// loads the members while they fill their quota.
	c.Etcd.AutoCompactionRetention = spec.Duration(time.Minute)
	// The fills below write 1 MiB values: under TCG a put costs about
	// 300 ms whatever its size up to a MiB (16 KiB values filled 64 MiB in
	// over 20 minutes). etcd keeps up to its last 5,000 raft entries in
	// memory for slow followers: the 150-odd entries of the two fills,
	// 150 MiB, on members of 768 MiB.
	c.Etcd.SnapshotCount = 100
	c.Maintenance = spec.Maintenance{Check: spec.Duration(10 * time.Second), DefragFreePercent: 5}
	b, err := spec.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	specPath := filepath.Join(work, "etcdimg.yaml")
	os.WriteFile(specPath, b, 0o644)
	u := upBuiltWith(t, work, []string{"--data-size", "576MiB", "--memory", "768"}, "--config", specPath)
	w := startWriter(t, u, "/load/maintenance")
	cli := u.client(t, 0, u.admin)
	ctx := context.Background()
	if quota := dbStatus(t, u)[0].DbSizeQuota; quota != 64<<20 {
		t.Fatalf("quota %d, want etcd's 64 MiB floor on a 576 MiB disk", quota)
	}

	// Scheduled defragmentation: 50,000 keys written (in transactions
	// of 100) then deleted; once etcd's periodic compaction has freed
	// their pages, every member defragments itself, one at a time, the
	// leader last.
	pctx, pcancel := context.WithTimeout(ctx, 10*time.Minute)
	for i := 0; i < 50_000; i += 100 {
		var ops []clientv3.Op
		for j := i; j < i+100; j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/churn/%06d", j), fmt.Sprintf("value-%06d-%s", j, strings.Repeat("x", 64))))
		}
		if _, err := cli.Txn(pctx).Then(ops...).Commit(); err != nil {
			t.Fatalf("put /churn/%06d…: %v", i, err)
		}
	}
	pcancel()
	if _, err := cli.Delete(ctx, "/churn/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	leader := leaderName(t, u)
	before := dbStatus(t, u)
	start := time.Now()
	// When each member's database file shrank, polled: the leader's last.
	shrank := map[string]time.Time{}
	waitUntil(t, u, 8*time.Minute, "every member defragmented on schedule", func() bool {
		for i, m := range u.state.Members {
			if _, ok := shrank[m.Name]; ok {
				continue
			}
			if st := tryStatus(u, i); st != nil && st.DbSize < before[i].DbSize {
				shrank[m.Name] = time.Now()
			}
		}
		return len(shrank) == len(u.state.Members)
	})
	for n, at := range shrank {
		if n != leader && at.After(shrank[leader]) {
			t.Errorf("%s shrank after the leader %s: %v", n, leader, shrank)
		}
	}
	after := dbStatus(t, u)
	for i, m := range u.state.Members {
		t.Logf("%s: database %d → %d bytes (%d in use)", m.Name, before[i].DbSize, after[i].DbSize, after[i].DbSizeInUse)
		if after[i].DbSize >= before[i].DbSize {
			t.Errorf("%s's database did not shrink: %d → %d bytes", m.Name, before[i].DbSize, after[i].DbSize)
		}
		t.Logf("%s console: %s", m.Name, grepLines(consoleOf(u, m.Name), "defrag: "))
	}
	t.Logf("scheduled defragmentation of every member within %s of the delete", time.Since(start).Round(time.Second))
	bm.ReportMetric(time.Since(start).Seconds(), "delete-to-every-member-defragmented-s")

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
	bm.ReportMetric(time.Since(start).Seconds(), "delete-to-nospace-disarmed-s")
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
		if s.DbSizeQuota < 400<<20 {
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
func dbStatus(t testing.TB, u *upCluster) []*clientv3.StatusResponse {
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

// tryStatus is member i's status, or nil when it does not answer (a
// defragmenting member serves nothing).
func tryStatus(u *upCluster, i int) *clientv3.StatusResponse {
	ep := fmt.Sprintf("https://127.0.0.1:%d", u.state.Members[i].Client)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, TLS: u.admin, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := cli.Status(ctx, ep)
	if err != nil {
		return nil
	}
	return st
}

// leaderName is the member that leads now.
func leaderName(t testing.TB, u *upCluster) string {
	t.Helper()
	for i, m := range u.state.Members {
		if st := tryStatus(u, i); st != nil && st.Leader == st.Header.MemberId {
			return m.Name
		}
	}
	t.Fatal("no member leads")
	return ""
}

// healthyMembers are the members that answer their status.
func healthyMembers(t testing.TB, u *upCluster) []string {
	var out []string
	for i, m := range u.state.Members {
		if tryStatus(u, i) != nil {
			out = append(out, m.Name)
		}
	}
	return out
}

func alarms(t testing.TB, cli *clientv3.Client) []string {
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

// fillQuota writes 1 MiB values under prefix until etcd answers
// "database space exceeded".
func fillQuota(t testing.TB, cli *clientv3.Client, prefix string) {
	t.Helper()
	value := strings.Repeat("x", 1<<20)
	failed := 0 // in a row: a loaded TCG member may time a request out
	for i := 0; i < 1000; {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := cli.Put(ctx, fmt.Sprintf("%s%05d", prefix, i), value)
		cancel()
		switch {
		case errors.Is(err, rpctypes.ErrNoSpace) || (err != nil && strings.Contains(err.Error(), "database space exceeded")):
			t.Logf("%s: database space exceeded after %d values", prefix, i)
			return
		case err != nil && failed < 10:
			failed++
			t.Logf("put %s%05d: %v; again", prefix, i, err)
			time.Sleep(3 * time.Second)
		case err != nil:
			t.Fatalf("put %s%05d: %v, %d times in a row", prefix, i, err, failed+1)
		default:
			failed = 0
			i++
		}
	}
	t.Fatal("the quota never filled")
}
