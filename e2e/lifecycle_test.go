package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdimg/ignition/ign"
	"etcdimg/internal/spec"
	"etcdimg/testvm/local"
)

// writer is an independent client that writes keys through every
// endpoint of a cluster under up and records each acknowledged write and
// each failure, in order.
type writer struct {
	prefix string
	cli    *clientv3.Client
	mu     sync.Mutex
	acked  map[string]string
	log    []bool // true: acknowledged
	stop   chan struct{}
	done   chan struct{}
}

func startWriter(t testing.TB, u *upCluster, prefix string) *writer {
	t.Helper()
	var eps []string
	for _, m := range u.state.Members {
		eps = append(eps, fmt.Sprintf("https://127.0.0.1:%d", m.Client))
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, TLS: u.admin, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	w := &writer{prefix: prefix, cli: cli, acked: map[string]string{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			k, v := fmt.Sprintf("%s/%06d", prefix, i), fmt.Sprintf("v%d", i)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_, err := cli.Put(ctx, k, v)
			cancel()
			w.mu.Lock()
			if err == nil {
				w.acked[k] = v
			}
			w.log = append(w.log, err == nil)
			w.mu.Unlock()
			if err != nil {
				time.Sleep(100 * time.Millisecond)
			} else {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}()
	t.Cleanup(w.Stop)
	return w
}

// Stop ends the writes; it may be called more than once.
func (w *writer) Stop() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	w.cli.Close()
}

// outages counts the runs of failed writes; acked is the number of
// acknowledged ones.
func (w *writer) outages() (runs, acked, failed int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	prev := true
	for _, ok := range w.log {
		if ok {
			acked++
		} else {
			failed++
			if prev {
				runs++
			}
		}
		prev = ok
	}
	return runs, acked, failed
}

// checkAcked waits until every member holds every acknowledged write,
// read locally (serializable) from each member's own endpoint.
func checkAcked(t testing.TB, u *upCluster, w *writer) {
	t.Helper()
	w.mu.Lock()
	acked := make(map[string]string, len(w.acked))
	for k, v := range w.acked {
		acked[k] = v
	}
	w.mu.Unlock()
	if len(acked) == 0 {
		t.Fatal("no write was acknowledged")
	}
	for i, m := range u.state.Members {
		deadline := time.Now().Add(time.Minute)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := u.client(t, i, u.admin).Get(ctx, w.prefix+"/", clientv3.WithPrefix(), clientv3.WithSerializable())
			cancel()
			missing := 0
			if err == nil {
				have := map[string]string{}
				for _, kv := range resp.Kvs {
					have[string(kv.Key)] = string(kv.Value)
				}
				for k, v := range acked {
					if have[k] != v {
						missing++
					}
				}
			}
			if err == nil && missing == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s lacks %d of %d acknowledged writes (%v)", m.Name, missing, len(acked), err)
			}
			time.Sleep(time.Second)
		}
	}
}

// membersByName returns the member list as name → ID, and the cluster ID.
func membersByName(t *testing.T, u *upCluster) (map[string]uint64, uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := u.client(t, 0, u.admin).MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, m := range list.Members {
		if m.IsLearner {
			t.Errorf("member %x (%s) is still a learner", m.ID, m.Name)
		}
		out[m.Name] = m.ID
	}
	return out, list.Header.ClusterId
}

// raftTerm is the highest raft term any member reports.
func raftTerm(t *testing.T, u *upCluster) uint64 {
	t.Helper()
	var term uint64
	for i, m := range u.state.Members {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := u.client(t, i, u.admin).Status(ctx, fmt.Sprintf("https://127.0.0.1:%d", m.Client))
		cancel()
		if err == nil {
			term = max(term, st.RaftTerm)
		}
	}
	return term
}

func (u *upCluster) reload(t testing.TB) {
	t.Helper()
	st, err := local.LoadState(filepath.Join(u.out, "run"))
	if err != nil {
		t.Fatal(err)
	}
	u.state = st
}

func consoleOf(u *upCluster, name string) string {
	for _, m := range u.state.Members {
		if m.Name == name {
			b, _ := os.ReadFile(m.Console)
			return string(b)
		}
	}
	return ""
}

// TestLifecycleKeepsEveryWrite is docs/lifecycle.md on one cluster under
// up, with an independent client writing through every endpoint all
// along: no acknowledged write is ever lost, and the cluster stays one
// cluster. The replace and roll: a roll refused while a member is
// stopped; a member damaged while off refused and healed by `replace`
// with a blank disk (and a spec grown by a member not yet booted);
// every member rolled; a whole-cluster power-off with one data disk
// swapped for a blank one. Then the rotations, through `upgrade`.
func TestLifecycleKeepsEveryWrite(t *testing.T) {
	longTest(t, rankLifecycle)
	u := upThree(t)
	replaceAndRoll(t, u)
	rotateCertsAndCA(t, u)
}

func replaceAndRoll(t *testing.T, u *upCluster) {
	before, clusterID := membersByName(t, u)

	// A value that every member holds, to be damaged on etcd-2's disk.
	probe := fmt.Sprintf("precious-value-%x", time.Now().UnixNano())
	pctx, pcancel := context.WithTimeout(context.Background(), time.Minute)
	if _, err := u.client(t, 0, u.admin).Put(pctx, "/damage/probe", probe); err != nil {
		t.Fatal(err)
	}
	pcancel()
	waitValue(t, u, 1, "/damage/probe", probe)

	// A roll is refused while a member is stopped, before anything
	// changes: no image is rebuilt, no member touched.
	if _, stderr, code := etcdimg(t, u.work, "stop", "etcd-2", "--out", u.out); code != 0 {
		t.Fatalf("stop etcd-2: %s", stderr)
	}
	images := tree(t, filepath.Join(u.out, "images"))
	_, stderr, code := etcdimg(t, u.work, "roll", "--out", u.out)
	if code != 1 || !strings.Contains(stderr, "refused, etcd-2 is not running") {
		t.Errorf("roll with etcd-2 stopped: exit %d: %s", code, stderr)
	}
	if after := tree(t, filepath.Join(u.out, "images")); fmt.Sprint(after) != fmt.Sprint(images) {
		t.Errorf("a refused roll changed the images")
	}

	// One byte of the value flipped in etcd-2's database while it is
	// off. Started again with its peers serving, it does not serve: etcd's
	// initial corruption check refuses it, its peers agree against it, it
	// keeps the verdict and stops etcd for good, and the console names it
	// and the fix; `health` names it.
	flipInDatabase(t, filepath.Join(u.out, "disks", "etcd-2-data.img"), probe)
	if _, stderr, code := etcdimg(t, u.work, "start", "etcd-2", "--out", u.out); code != 0 {
		t.Fatalf("start etcd-2: %s", stderr)
	}
	u.reload(t)
	waitConsole(t, u, "etcd-2", "agree against this member", 4*time.Minute)
	if c := consoleOf(u, "etcd-2"); !strings.Contains(c, "corruption: etcd refused to start") || !strings.Contains(c, "etcdimg replace etcd-2") ||
		!strings.Contains(c, "2 of its 2 peers serve: etcd compares its data") || !strings.Contains(c, "not restarting") {
		t.Errorf("etcd-2's console does not say what it checked, that it stopped, and how to heal it:\n%s", lastLines(c, 30))
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	if st, err := u.client(t, 1, u.admin).Status(sctx, fmt.Sprintf("https://127.0.0.1:%d", u.state.Members[1].Client)); err == nil {
		t.Errorf("etcd-2 serves on damaged data: %v", st)
	}
	scancel()
	if stdout, stderr, code := etcdimg(t, u.work, "health", "--out", u.out); code != 1 || !strings.Contains(stderr, "etcd-2") {
		t.Errorf("health with etcd-2 refused: exit %d\n%s%s", code, stdout, stderr)
	}
	// status asks the member's node API, which still answers: etcd
	// stopped for good, and why.
	if stdout, stderr, _ := etcdimg(t, u.work, "status", "--out", u.out); !strings.Contains(stdout, "etcd-2   STOPPED: etcd stopped for good: corruption") {
		t.Errorf("status does not say that etcd-2 stopped, and why:\n%s%s", stdout, stderr)
	}

	// replace heals it, under write load, with a blank disk. A fourth
	// member is added to the spec (not booted yet): the spec's initial
	// cluster no longer gives the running cluster's ID, which etcd fixed
	// at the first bootstrap; etcd-2's image still names the running
	// cluster (the output directory's record), and it rejoins it.
	three := mustRead(t, filepath.Join(u.out, "etcdimg.yaml"))
	grown, err := spec.Parse([]byte(three), "etcdimg.yaml")
	if err != nil {
		t.Fatal(err)
	}
	grown.Members = append(grown.Members, spec.Member{Name: "etcd-4", IP: "192.168.2.54"})
	grownYAML, err := spec.Marshal(grown)
	if err != nil {
		t.Fatal(err)
	}
	grownPath, threePath := filepath.Join(u.work, "grown.yaml"), filepath.Join(u.work, "three.yaml")
	os.WriteFile(grownPath, grownYAML, 0o644)
	os.WriteFile(threePath, []byte(three), 0o644)
	w := startWriter(t, u, "/load/replace")
	time.Sleep(2 * time.Second)
	stdout, stderr, code := etcdimg(t, u.work, "replace", "etcd-2", "--config", grownPath, "--out", u.out, "--timeout", "4m")
	t.Logf("replace etcd-2 (damaged) with etcd-4 added to the spec:\n%s", stdout)
	if code != 0 {
		t.Fatalf("replace: exit %d: %s", code, stderr)
	}
	if got := etcdConfVar(t, filepath.Join(u.out, "ignition", "etcd-2.ign"), ign.ClusterIDVar); got != fmt.Sprintf("%x", clusterID) {
		t.Errorf("etcd-2's config names cluster %q, want the running %x", got, clusterID)
	}
	// Back to three members for the rest of the story.
	if _, stderr, code := etcdimg(t, u.work, "render", "--config", threePath, "--out", u.out); code != 0 {
		t.Fatalf("render three: %s", stderr)
	}
	time.Sleep(2 * time.Second)
	w.Stop()
	u.reload(t)
	runs, acked, failed := w.outages()
	t.Logf("replace: %d writes acknowledged, %d failed in %d outages", acked, failed, runs)
	checkAcked(t, u, w)
	waitHealthy(t, u)
	waitValue(t, u, 1, "/damage/probe", probe)
	after, id := membersByName(t, u)
	if id != clusterID || len(after) != 3 {
		t.Fatalf("after replace: cluster %x (was %x), members %v", id, clusterID, after)
	}
	if after["etcd-2"] == before["etcd-2"] || after["etcd-1"] != before["etcd-1"] || after["etcd-3"] != before["etcd-3"] {
		t.Errorf("member IDs before %v, after %v: want only etcd-2's new", before, after)
	}
	// Added as a learner, or found added already (an add that timed out
	// under load but was applied), then promoted.
	if c := consoleOf(u, "etcd-2"); !joinedAsLearner.MatchString(c) || !strings.Contains(c, "from learner to voter") {
		t.Errorf("etcd-2 did not join as a learner and get promoted; its join lines:\n%s", grepLines(c, "join"))
	}
	if old, _ := filepath.Glob(filepath.Join(u.out, "disks", "old", "etcd-2-data-*.img")); len(old) != 1 {
		t.Errorf("the damaged data disk of etcd-2 was not kept aside: %v", old)
	}

	// roll every member under write load: at most one election each.
	before, _ = membersByName(t, u)
	term := raftTerm(t, u)
	w = startWriter(t, u, "/load/roll")
	time.Sleep(2 * time.Second)
	stdout, stderr, code = etcdimg(t, u.work, "roll", "--out", u.out, "--timeout", "4m")
	t.Logf("roll:\n%s", stdout)
	if code != 0 {
		t.Fatalf("roll: exit %d: %s", code, stderr)
	}
	time.Sleep(2 * time.Second)
	w.Stop()
	u.reload(t)
	runs, acked, failed = w.outages()
	t.Logf("roll: %d writes acknowledged, %d failed in %d outages", acked, failed, runs)
	checkAcked(t, u, w)
	after, id = membersByName(t, u)
	if id != clusterID || len(after) != 3 {
		t.Fatalf("after roll: cluster %x (was %x), members %v", id, clusterID, after)
	}
	for n, old := range before {
		if after[n] == old {
			t.Errorf("%s kept member ID %x through a roll with blank disks", n, old)
		}
	}
	// At most one election per member, and one more: with two clusters
	// on two cores (the long tests run two at a time), a follower starved
	// past its election timeout was seen to start one of its own.
	if d := raftTerm(t, u) - term; d > 4 {
		t.Errorf("the roll took %d elections (raft term %d → %d); want at most one per member, and one more", d, term, term+d)
	}

	// The whole cluster powered off; etcd-3's data disk swapped for a
	// blank one; all started again: no second cluster forms, etcd-3
	// rejoins as a learner and is promoted, every write is there.
	w = startWriter(t, u, "/load/powercut")
	time.Sleep(3 * time.Second)
	w.Stop()
	before, _ = membersByName(t, u)
	if _, stderr, code := etcdimg(t, u.work, "down", "--out", u.out); code != 0 {
		t.Fatalf("down: %s", stderr)
	}
	disk := filepath.Join(u.out, "disks", "etcd-3-data.img")
	if err := os.Rename(disk, disk+".aside"); err != nil {
		t.Fatal(err)
	}
	u.up(t)
	after, id = membersByName(t, u)
	if id != clusterID || len(after) != 3 {
		t.Fatalf("after the power-off with a blank disk: cluster %x (was %x), members %v", id, clusterID, after)
	}
	if after["etcd-3"] == before["etcd-3"] || after["etcd-1"] != before["etcd-1"] {
		t.Errorf("member IDs before %v, after %v: want only etcd-3's new", before, after)
	}
	for i, m := range u.state.Members {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := u.client(t, i, u.admin).Status(ctx, fmt.Sprintf("https://127.0.0.1:%d", m.Client))
		cancel()
		if err != nil || st.Header.ClusterId != clusterID {
			t.Errorf("%s: cluster %v, want %x (%v)", m.Name, st, clusterID, err)
		}
	}
	c := consoleOf(u, "etcd-3")
	if !strings.Contains(c, "removed this member's stale entry") || !strings.Contains(c, "from learner to voter") {
		t.Errorf("etcd-3 did not rejoin as a learner; console tail:\n%s", lastLines(c, 30))
	}
	checkAcked(t, u, w)
}

// rotateCertsAndCA is docs/lifecycle.md's rotations: `rotate certs` and
// the three runs of `rotate ca`, each under write load and each through
// `upgrade` (the members run slotted images). Every member serves a new
// serial and keeps its member ID, the application's certificate is
// reissued, the old CA's certificates work until the last phase and are
// then refused on every port; no acknowledged write is lost.
func rotateCertsAndCA(t *testing.T, u *upCluster) {
	var stdout, stderr string
	var code int
	var runs, acked, failed int
	var w *writer

	// rotate certs under write load: every member serves a certificate
	// with a new serial (as openssl s_client sees it), keeps its member
	// ID (the disks are kept), and a client's certificate is reissued.
	if _, stderr, code := etcdimg(t, u.work, "client", "add", "app", "--prefix", "/app/", "--out", u.out); code != 0 {
		t.Fatalf("client add: %s", stderr)
	}
	oldClient, _ := os.ReadFile(filepath.Join(u.out, "clients", "app.pem"))
	serials := servedSerials(t, u)
	// The rotations go through upgrade: a member marks its new slot good
	// after upgrade.goodAfter; 5 s keeps the four rotations short.
	specPath := filepath.Join(u.out, "etcdimg.yaml")
	if s := mustRead(t, specPath); strings.Contains(s, "goodAfter: 30s") {
		os.WriteFile(specPath, []byte(strings.Replace(s, "goodAfter: 30s", "goodAfter: 5s", 1)), 0o644)
	} else {
		t.Fatalf("the spec has no goodAfter: 30s to shorten:\n%s", s)
	}
	before, _ := membersByName(t, u)
	w = startWriter(t, u, "/load/rotate")
	time.Sleep(2 * time.Second)
	stdout, stderr, code = etcdimg(t, u.work, "rotate", "certs", "--out", u.out, "--timeout", "4m")
	t.Logf("rotate certs:\n%s", stdout)
	if code != 0 {
		t.Fatalf("rotate certs: exit %d: %s", code, stderr)
	}
	time.Sleep(2 * time.Second)
	w.Stop()
	u.reload(t)
	runs, acked, failed = w.outages()
	t.Logf("rotate certs: %d writes acknowledged, %d failed in %d outages", acked, failed, runs)
	checkAcked(t, u, w)
	after, _ := membersByName(t, u)
	now := servedSerials(t, u)
	for n, old := range serials {
		if now[n] == "" || now[n] == old {
			t.Errorf("%s serves serial %s after rotate certs (was %s)", n, now[n], old)
		}
		if after[n] != before[n] {
			t.Errorf("%s changed member ID through rotate certs (its disk was to be kept)", n)
		}
	}
	newClient, _ := os.ReadFile(filepath.Join(u.out, "clients", "app.pem"))
	if len(newClient) == 0 || string(newClient) == string(oldClient) {
		t.Error("rotate certs did not reissue the client's certificate")
	}
	cd := filepath.Join(u.out, "clients")
	app := u.client(t, 0, tlsConfig(t, filepath.Join(u.out, "pki", "etcd-ca.pem"), filepath.Join(cd, "app.pem"), filepath.Join(cd, "app-key.pem")))
	pctx, pcancel := context.WithTimeout(context.Background(), 30*time.Second)
	if _, err := app.Put(pctx, "/app/after-rotate", "ok"); err != nil {
		t.Errorf("the reissued client certificate: %v", err)
	}
	pcancel()
	if old, _ := filepath.Glob(filepath.Join(u.out, "retired", "*", "pki", "etcd-1-key.pem")); len(old) != 1 {
		t.Errorf("the old member key was not kept under retired/: %v", old)
	}

	// rotate ca: three runs, one per phase, each under write load (the
	// writer trusts what the operator is told to trust between phases).
	// Every write is kept, the old application certificate works until
	// the last phase, and then a certificate of the old CA is refused on
	// the client, peer and backup ports of every member.
	keep := t.TempDir()
	for _, f := range []string{"pki/etcd-ca.pem", "pki/admin.pem", "pki/admin-key.pem", "pki/etcd-1.pem", "pki/etcd-1-key.pem", "clients/app.pem", "clients/app-key.pem"} {
		b, err := os.ReadFile(filepath.Join(u.out, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(keep, filepath.Base(f)), b, 0o600)
	}
	before, _ = membersByName(t, u)
	bundle := filepath.Join(u.out, "pki", "etcd-ca.pem")
	for i, phase := range []string{"phase 1 of 3 (trust) done", "phase 2 of 3 (switch) done", "phase 3 of 3 (drop) done"} {
		u.admin = tlsConfig(t, bundle, filepath.Join(u.out, "pki", "admin.pem"), filepath.Join(u.out, "pki", "admin-key.pem"))
		w = startWriter(t, u, fmt.Sprintf("/load/rotate-ca-%d", i+1))
		time.Sleep(2 * time.Second)
		stdout, stderr, code = etcdimg(t, u.work, "rotate", "ca", "--out", u.out, "--timeout", "4m")
		t.Logf("rotate ca (%d):\n%s", i+1, stdout)
		if code != 0 || !strings.Contains(stdout, phase) {
			t.Fatalf("rotate ca, run %d: exit %d: %s", i+1, code, stderr)
		}
		time.Sleep(2 * time.Second)
		w.Stop()
		u.reload(t)
		runs, acked, failed = w.outages()
		t.Logf("rotate ca (%d): %d writes acknowledged, %d failed in %d outages", i+1, acked, failed, runs)
		checkAcked(t, u, w)
		if i < 2 {
			// The old CA is still trusted: the application's first
			// certificate still writes its prefix.
			oldApp := u.client(t, 0, tlsConfig(t, bundle, filepath.Join(keep, "app.pem"), filepath.Join(keep, "app-key.pem")))
			pctx, pcancel := context.WithTimeout(context.Background(), 30*time.Second)
			if _, err := oldApp.Put(pctx, "/app/rotate-ca", fmt.Sprint(i)); err != nil {
				t.Errorf("after rotate ca run %d, the old application certificate: %v", i+1, err)
			}
			pcancel()
		}
	}
	u.admin = tlsConfig(t, bundle, filepath.Join(u.out, "pki", "admin.pem"), filepath.Join(u.out, "pki", "admin-key.pem"))
	after, _ = membersByName(t, u)
	for n := range before {
		if after[n] != before[n] {
			t.Errorf("%s changed member ID through rotate ca (its disk was to be kept)", n)
		}
	}
	if ca, _ := os.ReadFile(bundle); strings.Count(string(ca), "BEGIN CERTIFICATE") != 1 || string(ca) == mustRead(t, filepath.Join(keep, "etcd-ca.pem")) {
		t.Errorf("after rotate ca, etcd-ca.pem holds %d certificates, the old CA's: %v", strings.Count(string(ca), "BEGIN CERTIFICATE"), string(ca) == mustRead(t, filepath.Join(keep, "etcd-ca.pem")))
	}
	newApp := u.client(t, 1, tlsConfig(t, bundle, filepath.Join(cd, "app.pem"), filepath.Join(cd, "app-key.pem")))
	pctx, pcancel = context.WithTimeout(context.Background(), 30*time.Second)
	if _, err := newApp.Put(pctx, "/app/after-rotate-ca", "ok"); err != nil {
		t.Errorf("the application's certificate of the new CA: %v", err)
	}
	pcancel()
	// openssl, with the new CA as its trust, on every member's client,
	// peer and backup ports: the new admin certificate is answered; a
	// certificate of the old CA gets TLS alert 48, unknown CA. (Through
	// the forwarded peer port even a current member certificate gets no
	// answer, as etcd checks a peer's certificate against the address it
	// connects from, here the gateway's; it passes the CA check, which is
	// what is asked here.)
	newAdmin := []string{"-cert", filepath.Join(u.out, "pki", "admin.pem"), "-key", filepath.Join(u.out, "pki", "admin-key.pem")}
	oldAdmin := []string{"-cert", filepath.Join(keep, "admin.pem"), "-key", filepath.Join(keep, "admin-key.pem")}
	newMember := []string{"-cert", filepath.Join(u.out, "pki", "etcd-1.pem"), "-key", filepath.Join(u.out, "pki", "etcd-1-key.pem")}
	oldMember := []string{"-cert", filepath.Join(keep, "etcd-1.pem"), "-key", filepath.Join(keep, "etcd-1-key.pem")}
	for _, m := range u.state.Members {
		for _, tc := range []struct {
			port int
			cert []string
			want string // "answered", "unknown ca" or "ca accepted"
			what string
		}{
			{m.Client, newAdmin, "answered", "new admin on the client port"},
			{m.Client, oldAdmin, "unknown ca", "old admin on the client port"},
			{m.Peer, newMember, "ca accepted", "new member on the peer port"},
			{m.Peer, oldMember, "unknown ca", "old member on the peer port"},
			{m.Backup, newAdmin, "answered", "new admin on the backup port"},
			{m.Backup, oldAdmin, "unknown ca", "old admin on the backup port"},
		} {
			out, err := sClientRequest(fmt.Sprintf("127.0.0.1:%d", tc.port), append([]string{"-CAfile", bundle}, tc.cert...)...)
			unknownCA := strings.Contains(out, "alert unknown ca")
			ok := map[string]bool{
				"answered":    err == nil,
				"unknown ca":  err != nil && unknownCA,
				"ca accepted": strings.Contains(out, "verify return:1") && !unknownCA,
			}[tc.want]
			if !ok {
				t.Errorf("%s: %s: want %s, got %v:\n%s", m.Name, tc.what, tc.want, err, lastLines(out, 4))
			}
		}
	}

}

// joinedAsLearner is a joining member's console line: added as a learner
// by this boot, or by an earlier try whose answer was lost.
var joinedAsLearner = regexp.MustCompile(`added as learner [0-9a-f]+|already added as [0-9a-f]+ \(learner true\)`)

// waitValue waits until member i holds key at value, read locally.
func waitValue(t *testing.T, u *upCluster, i int, key, value string) {
	t.Helper()
	cli := u.client(t, i, u.admin)
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := cli.Get(ctx, key, clientv3.WithSerializable())
		cancel()
		if err == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == value {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not hold %s = %q: %v %v", u.state.Members[i].Name, key, value, r, err)
		}
		time.Sleep(time.Second)
	}
}

// waitConsole waits until member name's console says want; it prints
// the console's tail when it does not within timeout.
func waitConsole(t *testing.T, u *upCluster, name, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(consoleOf(u, name), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%s's console did not say %q within %s; its tail:\n%s", name, want, timeout, lastLines(consoleOf(u, name), 40))
		}
		time.Sleep(2 * time.Second)
	}
}

// flipInDatabase flips one byte of value where etcd's database on the
// ext4 data disk image holds it, found with e2fsprogs' debugfs (the file
// dumped, its block mapped to the disk), and checks that the database
// now holds the value no more. The WAL, elsewhere on the disk, keeps it.
func flipInDatabase(t *testing.T, disk, value string) {
	t.Helper()
	const db = "/etcd/member/snap/db"
	dump := filepath.Join(t.TempDir(), "db")
	debugfs := func(req string) string {
		out, err := exec.Command("debugfs", "-R", req, disk).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs %s: %v: %s", req, err, out)
		}
		return string(out)
	}
	debugfs("dump " + db + " " + dump)
	b, err := os.ReadFile(dump)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int64
	for i := 0; ; {
		j := strings.Index(string(b[i:]), value)
		if j < 0 {
			break
		}
		offs = append(offs, int64(i+j))
		i += j + len(value)
	}
	if len(offs) == 0 {
		t.Fatalf("%s on %s does not hold %q", db, disk, value)
	}
	var bs int64
	for _, l := range strings.Split(debugfs("stats"), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Block size:"); ok {
			bs, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	if bs == 0 {
		t.Fatal("debugfs stats: no block size")
	}
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Every copy: bbolt writes a changed page anew, so freed pages may
	// hold older copies of the live one.
	for _, off := range offs {
		fields := strings.Fields(debugfs(fmt.Sprintf("bmap %s %d", db, off/bs)))
		if len(fields) == 0 {
			t.Fatalf("debugfs bmap %s %d: no answer", db, off/bs)
		}
		phys, err := strconv.ParseInt(fields[len(fields)-1], 10, 64)
		if err != nil || phys == 0 {
			t.Fatalf("debugfs bmap: %q: %v", fields, err)
		}
		at := phys*bs + off%bs
		one := make([]byte, 1)
		if _, err := f.ReadAt(one, at); err != nil || one[0] != value[0] {
			t.Fatalf("the disk holds %q at %d, not the value's first byte %q (%v)", one, at, value[0], err)
		}
		one[0] ^= 0x01
		if _, err := f.WriteAt(one, at); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	debugfs("dump " + db + " " + dump)
	if b, _ := os.ReadFile(dump); strings.Contains(string(b), value) {
		t.Fatalf("%s still holds %q after the flip", db, value)
	}
}

func waitHealthy(t *testing.T, u *upCluster) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		_, _, code := etcdimg(t, u.work, "health", "--out", u.out)
		if code == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the cluster did not become healthy again")
		}
		time.Sleep(2 * time.Second)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// servedSerials reads, with openssl s_client, the serial of the
// certificate each member serves on its (forwarded) client port.
func servedSerials(t *testing.T, u *upCluster) map[string]string {
	t.Helper()
	pkiDir := filepath.Join(u.out, "pki")
	out := map[string]string{}
	for _, m := range u.state.Members {
		cmd := exec.Command("sh", "-c", fmt.Sprintf("openssl s_client -connect 127.0.0.1:%d -CAfile %s -cert %s -key %s </dev/null 2>/dev/null | openssl x509 -noout -serial",
			m.Client, filepath.Join(pkiDir, "etcd-ca.pem"), filepath.Join(pkiDir, "admin.pem"), filepath.Join(pkiDir, "admin-key.pem")))
		b, err := cmd.Output()
		if err != nil || !strings.HasPrefix(string(b), "serial=") {
			t.Errorf("%s: openssl s_client: %v %q", m.Name, err, b)
			continue
		}
		out[m.Name] = strings.TrimSpace(string(b))
	}
	return out
}

// etcdConfVar is the variable key of etcd.conf in the Ignition config at
// path.
func etcdConfVar(t *testing.T, path, key string) string {
	t.Helper()
	cfg, err := ign.Parse([]byte(mustRead(t, path)))
	if err == nil {
		var b []byte
		if b, err = ign.FileContents(cfg, ign.EtcdConfPath); err == nil {
			var env map[string]string
			if env, err = ign.EnvMap(b); err == nil {
				return env[key]
			}
		}
	}
	t.Fatalf("%s: %v", path, err)
	return ""
}
