package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdimg/testvm"
	"etcdimg/testvm/local"
)

// upCluster is a cluster started with `etcdimg up --detach`.
type upCluster struct {
	work, out string
	state     *local.State
	admin     *tls.Config
	// upArgs are more arguments for `etcdimg up` (--data-size, say).
	upArgs []string
}

// upThree builds a three-member cluster and boots it with `etcdimg up`.
// The cluster is taken down at the end of the test, by `etcdimg down` and
// then by PID for anything left; the consoles' tails are printed if the
// test failed.
func upThree(t testing.TB) *upCluster {
	t.Helper()
	return upBuilt(t, t.TempDir(), "--nodes", "3")
}

// stateMembers are the members as the last up recorded them, if any.
func (u *upCluster) stateMembers() []local.MemberState {
	if u.state == nil {
		return nil
	}
	return u.state.Members
}

// upBuilt is upThree with other build arguments (a --config, say), in
// the work directory work.
func upBuilt(t testing.TB, work string, buildArgs ...string) *upCluster {
	t.Helper()
	return upBuiltWith(t, work, nil, buildArgs...)
}

// upBuiltWith is upBuilt with more arguments for `etcdimg up`.
func upBuiltWith(t testing.TB, work string, upArgs []string, buildArgs ...string) *upCluster {
	t.Helper()
	out := filepath.Join(work, "out")
	if _, stderr, code := etcdimg(t, work, append([]string{"build", "--out", out}, buildArgs...)...); code != 0 {
		t.Fatalf("build: %s", stderr)
	}
	u := &upCluster{work: work, out: out, upArgs: upArgs}
	t.Cleanup(func() {
		st, err := local.LoadState(filepath.Join(out, "run"))
		// A failure after `down` (which removes the state file) shows
		// the consoles too: they stay in the run directory.
		members := u.stateMembers()
		if err == nil {
			members = st.Members
		}
		if t.Failed() {
			for _, m := range members {
				t.Logf("--- %s console tail ---\n%s", m.Name, testvm.TailFile(m.Console, 25))
			}
		}
		etcdimg(t, work, "down", "--out", out)
		if err == nil {
			for _, pid := range append([]int{st.Switch.PID, st.Gateway.PID}, pids(st)...) {
				if testvm.Alive(pid) {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	})
	u.up(t)
	pkiDir := filepath.Join(out, "pki")
	u.admin = tlsConfig(t, filepath.Join(pkiDir, "etcd-ca.pem"), filepath.Join(pkiDir, "admin.pem"), filepath.Join(pkiDir, "admin-key.pem"))
	return u
}

func (u *upCluster) up(t testing.TB) {
	t.Helper()
	// A port base of its own, so that a cluster an operator left running
	// with `make up` (base 40000) does not stop the test.
	base := freePortBase(t, 3)
	stdout, stderr, code := etcdimg(t, u.work, append([]string{"up", "--out", u.out, "--detach", "--accel", "tcg", "--timeout", "4m", "--port-base", strconv.Itoa(base)}, u.upArgs...)...)
	t.Logf("up:\n%s", stdout)
	if code != 0 {
		t.Fatalf("up: exit %d: %s", code, stderr)
	}
	st, err := local.LoadState(filepath.Join(u.out, "run"))
	if err != nil {
		t.Fatal(err)
	}
	u.state = st
}

// freePortBase finds a --port-base whose forwarded ports for n members
// are all free now and that no other test of this run has taken. It looks
// below the kernel's ephemeral range first: a port there is never taken
// by an outgoing connection between this check and the member's start
// (CI once lost two tests to an S3 client's source port, 41184, that was
// a member's node API port).
func freePortBase(t testing.TB, n int) int {
	t.Helper()
	portBases.Lock()
	defer portBases.Unlock()
	lo, hi := ephemeralRange()
	var bases []int
	for base := 20000; base+100*n+100 < lo; base += 1000 {
		bases = append(bases, base)
	}
	for base := hi + 1; base+100*n+100 < 65535; base += 1000 {
		bases = append(bases, base)
	}
	for base := 41000; base < 60000; base += 1000 {
		bases = append(bases, base)
	}
	for _, base := range bases {
		if portBases.taken[base] {
			continue
		}
		free := true
		for i := 1; i <= n && free; i++ {
			for _, p := range local.HostPorts(base, i) {
				if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err != nil {
					free = false
					break
				} else {
					l.Close()
				}
			}
		}
		if free {
			portBases.taken[base] = true
			return base
		}
	}
	t.Fatal("no free port base")
	return 0
}

// portBases are the bases this run's tests took: two tests that start at
// once never get the same one.
var portBases = struct {
	sync.Mutex
	taken map[int]bool
}{taken: map[int]bool{}}

// ephemeralRange is the kernel's range of source ports for outgoing
// connections (Linux's default when it cannot be read).
func ephemeralRange() (lo, hi int) {
	lo, hi = 32768, 60999
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	var l, h int
	if _, err := fmt.Sscan(string(b), &l, &h); err == nil && l > 0 && h >= l {
		return l, h
	}
	return lo, hi
}

func pids(st *local.State) []int {
	var p []int
	for _, m := range st.Members {
		p = append(p, m.QEMU.PID)
	}
	return p
}

func (u *upCluster) client(t testing.TB, i int, tc *tls.Config) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{fmt.Sprintf("https://127.0.0.1:%d", u.state.Members[i].Client)},
		TLS:       tc, DialTimeout: 10 * time.Second, Logger: zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// metric reads one unlabelled sample from a member's /metrics.
func (u *upCluster) metric(t *testing.T, i int, name string) float64 {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", u.state.Members[i].Metrics))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("%s: no metric %s", u.state.Members[i].Name, name)
	return 0
}

// TestUpFormsOneClusterOnTheLAN is the README's `make up`: three members
// boot in parallel on the virtual LAN and form one cluster, TLS all the
// way, observable by a real Prometheus; it survives down and up, and
// `etcdimg health` names a member whose QEMU is killed while the other
// two keep serving writes.
func TestUpFormsOneClusterOnTheLAN(t *testing.T) {
	u := upThree(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// One cluster of three started members with https URLs.
	list, err := u.client(t, 0, u.admin).MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	clusterID := list.Header.ClusterId
	checkMembers(t, list, 3, "https://192.168.2.5")

	// Authentication is on from bootstrap: the members turned it on, with
	// root and each member (their certificates' CNs) in the root role,
	// and the Kubernetes API server's user with a role on /registry/.
	waitUntil(t, u, time.Minute, "authentication on", func() bool {
		st, err := u.client(t, 0, u.admin).AuthStatus(ctx)
		return err == nil && st.Enabled
	})
	users, err := u.client(t, 0, u.admin).UserList(ctx)
	if err != nil || strings.Join(users.Users, " ") != "etcd-1 etcd-2 etcd-3 kube-apiserver-etcd-client root" {
		t.Errorf("users %v: %v", users, err)
	}
	if r, err := u.client(t, 0, u.admin).RoleGet(ctx, "kube-apiserver-etcd-client"); err != nil || len(r.Perm) != 1 || string(r.Perm[0].Key) != "/registry/" || string(r.Perm[0].RangeEnd) != "/registry0" {
		t.Errorf("the Kubernetes API server's role: %v %v", r, err)
	}

	// A key written through member 1 is read through members 2 and 3.
	if _, err := u.client(t, 0, u.admin).Put(ctx, "/etcdimg/lan", "one-cluster"); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 3; i++ {
		got, err := u.client(t, i, u.admin).Get(ctx, "/etcdimg/lan")
		if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "one-cluster" {
			t.Errorf("read via %s: %v %v", u.state.Members[i].Name, got, err)
		}
	}

	// snapshot save takes a verified snapshot over mTLS from a member;
	// openssl agrees on its SHA-256; status reads it back; a second save
	// to the same name is refused and leaves the file alone; a truncated
	// copy is refused by status.
	snap := filepath.Join(u.work, "backup.db")
	stdout, stderr, code := etcdimg(t, u.work, "snapshot", "save", snap, "--out", u.out)
	t.Logf("snapshot save:\n%s", stdout)
	if code != 0 || !strings.Contains(stdout, "verified") || !strings.Contains(stdout, "TOTAL KEYS") {
		t.Fatalf("snapshot save: exit %d\n%s%s", code, stdout, stderr)
	}
	dgst, err := exec.Command("openssl", "dgst", "-sha256", "-r", snap).Output()
	if err != nil {
		t.Fatal(err)
	}
	sum := strings.Fields(string(dgst))[0]
	if !strings.Contains(stdout, "sha256 "+sum) {
		t.Errorf("snapshot save printed another SHA-256 than openssl's %s", sum)
	}
	if st, _ := os.Stat(snap); st == nil || st.Mode().Perm() != 0o600 {
		t.Errorf("snapshot file mode: %v", st)
	}
	if out, _, code := etcdimg(t, u.work, "snapshot", "status", snap); code != 0 || !strings.Contains(out, "sha256 "+sum) {
		t.Errorf("snapshot status: exit %d\n%s", code, out)
	}
	if _, stderr, code := etcdimg(t, u.work, "snapshot", "save", snap, "--out", u.out); code != 1 || !strings.Contains(stderr, "exists") {
		t.Errorf("a second save to the same name: exit %d, %s", code, stderr)
	}
	b, _ := os.ReadFile(snap)
	os.WriteFile(snap+".cut", b[:len(b)-1000], 0o600)
	if _, stderr, code := etcdimg(t, u.work, "snapshot", "status", snap+".cut"); code != 1 || !strings.Contains(stderr, "no integrity hash") {
		t.Errorf("a truncated snapshot: exit %d, %s", code, stderr)
	}

	// The leader was elected once: every member saw one leader change and
	// names the same leader.
	var leader uint64
	for i := range 3 {
		if n := u.metric(t, i, "etcd_server_leader_changes_seen_total"); n != 1 {
			t.Errorf("%s saw %v leader changes, want 1", u.state.Members[i].Name, n)
		}
		st, err := u.client(t, i, u.admin).Status(ctx, fmt.Sprintf("https://127.0.0.1:%d", u.state.Members[i].Client))
		if err != nil {
			t.Fatal(err)
		}
		if leader == 0 {
			leader = st.Leader
		} else if st.Leader != leader {
			t.Errorf("%s names leader %x, others %x", u.state.Members[i].Name, st.Leader, leader)
		}
	}

	// No certificate, or one from another CA, is refused on every client
	// port; the admin certificate is served on each (the control).
	foreignOut := filepath.Join(u.work, "foreign")
	if _, stderr, code := etcdimg(t, u.work, "render", "--nodes", "4", "--out", foreignOut); code != 0 {
		t.Fatal(stderr)
	}
	fp := filepath.Join(foreignOut, "pki")
	ca := filepath.Join(u.out, "pki", "etcd-ca.pem")
	foreign := tlsConfig(t, ca, filepath.Join(fp, "admin.pem"), filepath.Join(fp, "admin-key.pem"))
	noCert := tlsConfig(t, ca, "", "")
	for _, m := range u.state.Members {
		for what, tc := range map[string]*tls.Config{"admin": u.admin, "foreign CA": foreign, "no certificate": noCert} {
			c := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
			resp, err := c.Get(fmt.Sprintf("https://127.0.0.1:%d/version", m.Client))
			if err == nil {
				resp.Body.Close()
			}
			switch {
			case what == "admin" && err != nil:
				t.Errorf("%s: admin refused: %v", m.Name, err)
			case what != "admin" && err == nil:
				t.Errorf("%s: a client with %s was served", m.Name, what)
			}
		}
	}

	// A peer with a certificate from another CA cannot join: a fourth
	// member from a foreign build boots onto the same LAN and tries to
	// reach the three; they reject its certificate and stay three, and it
	// never starts a cluster of its own beside them: with a blank disk it
	// waits until it can see every member of its spec.
	if _, stderr, code := etcdimg(t, u.work, "build", "--out", foreignOut); code != 0 {
		t.Fatal(stderr)
	}
	intruder, err := testvm.Start(testvm.Options{
		Name: "intruder", Dir: filepath.Join(u.work, "intruder"),
		Image: filepath.Join(foreignOut, "images", "etcd-4.img"), DataDisk: filepath.Join(u.work, "intruder", "data.img"),
		Accel: "tcg", MemoryMB: guestMemoryMB,
		GuestIP: netip.MustParseAddr("192.168.2.54"), LAN: u.state.SwitchSocket,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(intruder.Kill)
	if err := intruder.WaitConsole("TLS refused: is its certificate from this cluster's CA?", bootTimeout); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(bootTimeout)
	for rejected := false; !rejected; {
		for _, m := range u.state.Members {
			b, _ := os.ReadFile(m.Console)
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "rejected connection") && strings.Contains(line, "192.168.2.54") {
					rejected = true
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no member logged rejecting the intruder's certificate; intruder console:\n%s", intruder.Tail(20))
		}
		time.Sleep(time.Second)
	}
	if list, err := u.client(t, 1, u.admin).MemberList(ctx); err != nil || len(list.Members) != 3 {
		t.Errorf("after the intruder: %v %v", list, err)
	}
	if b, _ := os.ReadFile(intruder.Console); strings.Contains(string(b), "start etcd.service") {
		t.Errorf("the intruder started etcd beside a cluster it cannot see")
	}
	intruder.Kill()

	// Under up, run/etcdctl.env and run/prometheus.yml point at the
	// forwarded ports; render, which never reads the running cluster,
	// keeps the top-level copies on the members' own addresses.
	if _, stderr, code := etcdimg(t, u.work, "render", "--out", u.out); code != 0 {
		t.Fatalf("render while up: %s", stderr)
	}
	env, _ := os.ReadFile(filepath.Join(u.out, "run", "etcdctl.env"))
	prom, _ := os.ReadFile(filepath.Join(u.out, "run", "prometheus.yml"))
	if !strings.Contains(string(env), fmt.Sprintf("https://127.0.0.1:%d", u.state.Members[0].Client)) ||
		!strings.Contains(string(prom), fmt.Sprintf("127.0.0.1:%d", u.state.Members[2].Metrics)) {
		t.Errorf("tool configs under up:\n%s\n%s", env, prom)
	}
	if top, _ := os.ReadFile(filepath.Join(u.out, "etcdctl.env")); !strings.Contains(string(top), "https://192.168.2.51:2379") {
		t.Errorf("render rewrote etcdctl.env for the running cluster:\n%s", top)
	}

	// A real Prometheus, with the generated prometheus.yml, scrapes every
	// member, and every query of the generated dashboard returns data.
	prometheusScrapes(t, u)

	// Least privilege: the backup API and client prefixes.
	checkLeastPrivilege(t, u)

	// down, then up: the same cluster, its data intact.
	if stdout, stderr, code := etcdimg(t, u.work, "down", "--out", u.out); code != 0 || strings.Count(stdout, "powered off") != 3 {
		t.Fatalf("down: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, m := range u.state.Members {
		if testvm.Alive(m.QEMU.PID) {
			t.Errorf("%s (pid %d) still runs after down", m.Name, m.QEMU.PID)
		}
	}
	if _, err := os.Stat(filepath.Join(u.out, "run", "etcdctl.env")); err == nil {
		t.Errorf("run/etcdctl.env still points at a cluster that is down")
	}
	u.up(t)
	list, err = u.client(t, 2, u.admin).MemberList(ctx)
	if err != nil || list.Header.ClusterId != clusterID || len(list.Members) != 3 {
		t.Fatalf("after down/up: cluster %x (was %x), %v", list.Header.ClusterId, clusterID, err)
	}
	got, err := u.client(t, 1, u.admin).Get(ctx, "/etcdimg/lan")
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "one-cluster" {
		t.Errorf("after down/up: %v %v", got, err)
	}

	// Kill one member's QEMU: health exits 1 and names it; the other two
	// keep serving writes.
	victim := u.state.Members[1]
	syscall.Kill(victim.QEMU.PID, syscall.SIGKILL)
	testvm.WaitGone(victim.QEMU.PID, 10*time.Second)
	stdout, stderr, code = etcdimg(t, u.work, "health", "--out", u.out)
	if code != 1 || !strings.Contains(stderr, victim.Name) || !strings.Contains(stdout, "HEALTH") {
		t.Errorf("health with %s dead: exit %d\n%s%s", victim.Name, code, stdout, stderr)
	}
	// A context of its own: the test's has spent most of its two minutes.
	lctx, lcancel := context.WithTimeout(context.Background(), time.Minute)
	defer lcancel()
	for _, i := range []int{0, 2} {
		if _, err := u.client(t, i, u.admin).Put(lctx, fmt.Sprintf("/etcdimg/after-loss/%d", i), "ok"); err != nil {
			t.Errorf("write via %s with one member down: %v", u.state.Members[i].Name, err)
		}
	}
	if _, _, code := etcdimg(t, u.work, "status", "--out", u.out); code != 1 {
		t.Errorf("status with a dead member: exit %d, want 1", code)
	}
}

// promQuery runs a query and returns each series' value by member.
type promQuery func(q string) (map[string]string, error)

// prometheusScrapes runs Debian's prometheus on loopback with the
// cluster's prometheus.yml and waits until it reports up == 1 and
// etcd_server_has_leader == 1 for every member; then every query of the
// rendered Grafana dashboard must return series from it. It is stopped
// by PID.
func prometheusScrapes(t *testing.T, u *upCluster) {
	t.Helper()
	query, port, dir, stop := startPrometheus(t, filepath.Join(u.out, "run", "prometheus.yml"))
	defer stop()
	checkScrapes(t, u, query, port, dir)
	checkDashboardQueries(t, u.out, port, dir)
}

// startPrometheus runs Debian's prometheus on the given prometheus.yml,
// on loopback.
func startPrometheus(t *testing.T, config string) (query promQuery, port int, dir string, stop func()) {
	t.Helper()
	port, err := testvm.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	logf, _ := os.Create(filepath.Join(dir, "prometheus.log"))
	defer logf.Close()
	cmd := exec.Command("prometheus",
		"--config.file="+config,
		"--web.listen-address=127.0.0.1:"+strconv.Itoa(port),
		"--storage.tsdb.path="+filepath.Join(dir, "data"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stop = func() { stopGroup(cmd.Process.Pid, done, 10*time.Second) }
	query = func(q string) (map[string]string, error) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/query?query=%s", port, url.QueryEscape(q)))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []struct {
					Metric map[string]string `json:"metric"`
					Value  []any             `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("%s: %s", err, b)
		}
		out := map[string]string{}
		for _, s := range r.Data.Result {
			out[s.Metric["member"]] = fmt.Sprint(s.Value[1])
		}
		return out, nil
	}
	return query, port, dir, stop
}

func checkScrapes(t *testing.T, u *upCluster, query promQuery, port int, dir string) {
	t.Helper()
	// The alert rules that prometheus.yml names are loaded.
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/rules", port))
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(b), `"name":"EtcdMemberDown"`) && strings.Contains(string(b), `"name":"EtcdDatabaseNearQuota"`) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus did not load the alert rules\n%s", testvm.TailFile(filepath.Join(dir, "prometheus.log"), 15))
		}
		time.Sleep(500 * time.Millisecond)
	}
	deadline = time.Now().Add(2 * time.Minute)
	for {
		up, err1 := query(`up{job="etcd"}`)
		leader, err2 := query("etcd_server_has_leader")
		// Every member's backup service is scraped too (job etcdimg).
		node, err3 := query(`etcdimg_backup_interval_seconds{job="etcdimg"}`)
		ok := err1 == nil && err2 == nil && err3 == nil && len(up) == 3 && len(leader) == 3 && len(node) == 3
		for _, m := range u.state.Members {
			ok = ok && up[m.Name] == "1" && leader[m.Name] == "1" && node[m.Name] == "3600"
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus: up=%v has_leader=%v backup interval=%v (%v %v %v)\n%s", up, leader, node, err1, err2, err3, testvm.TailFile(filepath.Join(dir, "prometheus.log"), 15))
		}
		time.Sleep(time.Second)
	}
}

// TestUpEndsWhenAMemberStopsItsBoot: a member that refuses its data disk
// (it holds a FAT file system, so it is never formatted) stops its boot
// and waits to be powered off. `up` says which member stopped and why,
// and exits 1 at once instead of waiting out its timeout; the disk still
// holds its FAT.
func TestUpEndsWhenAMemberStopsItsBoot(t *testing.T) {
	work := t.TempDir()
	out := filepath.Join(work, "out")
	if _, stderr, code := etcdimg(t, work, "build", "--nodes", "1", "--out", out); code != 0 {
		t.Fatalf("build: %s", stderr)
	}
	disk := filepath.Join(out, "disks", "etcd-1-data.img")
	if err := os.MkdirAll(filepath.Dir(disk), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 64<<20); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("mkfs.vfat", disk).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.vfat: %v %s", err, b)
	}
	before, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { etcdimg(t, work, "down", "--out", out) })
	_, stderr, code := etcdimg(t, work, "up", "--out", out, "--detach", "--accel", "tcg", "--timeout", "4m", "--port-base", strconv.Itoa(freePortBase(t, 1)))
	if code != 1 || !strings.Contains(stderr, "up: etcd-1 stopped its boot: prepare data disk: data disk /dev/vdb: it holds FAT at its start; not formatting it") {
		t.Errorf("up: exit %d, stderr:\n%s", code, stderr)
	}
	if after, err := os.ReadFile(disk); err != nil || !bytes.Equal(before, after) {
		t.Errorf("the refused data disk changed (%v)", err)
	}
}
