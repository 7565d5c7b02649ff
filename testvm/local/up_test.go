package local

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"etcdimg/cluster"
	"etcdimg/cluster/health"
	"etcdimg/internal/etcdtest"
	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
	"etcdimg/testvm"
)

// etcdAt is the Etcd of real one-member etcd servers, one per name.
func etcdAt(t *testing.T, names ...string) *cluster.Etcd {
	t.Helper()
	e := &cluster.Etcd{}
	for _, n := range names {
		_, url := etcdtest.Start(t, func(c *embed.Config) {
			c.Name = n
			c.InitialCluster = n + "=" + c.AdvertisePeerUrls[0].String()
		})
		e.Endpoints = append(e.Endpoints, health.Endpoint{Member: n, URL: url})
	}
	return e
}

// TestWaitHealthyEndsWhenAllAnswer: members that serve end the wait at
// once, well before its bound, each healthy in the results.
func TestWaitHealthyEndsWhenAllAnswer(t *testing.T) {
	e := etcdAt(t, "etcd-1", "etcd-2")
	start := time.Now()
	rs := waitHealthy(context.Background(), e, time.Minute, 10*time.Millisecond, func() bool { return false })
	if !health.Healthy(rs) || len(rs) != 2 || rs[1].Member != "etcd-2" {
		t.Fatalf("results %+v", rs)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("took %s", took)
	}
}

// TestWaitHealthyGivesUpWithTheMachines: a member that never answers
// keeps the wait going until its bound, unless a machine is gone (or
// stopped its boot): then the wait ends within a poll or so, with the
// silent member unhealthy and the others' results kept.
func TestWaitHealthyGivesUpWithTheMachines(t *testing.T) {
	e := etcdAt(t, "etcd-1")
	silent := etcdtest.FreeURL(t, "http")
	e.Endpoints = append(e.Endpoints, health.Endpoint{Member: "etcd-2", URL: silent.String()})

	start := time.Now()
	rs := waitHealthy(context.Background(), e, 1500*time.Millisecond, 10*time.Millisecond, func() bool { return false })
	if took := time.Since(start); took < 1500*time.Millisecond {
		t.Errorf("the wait ended after %s, before its bound, with nobody giving up", took)
	}
	if health.Healthy(rs) || !rs[0].Healthy || rs[1].Healthy {
		t.Errorf("results %+v", rs)
	}

	gone := time.Now().Add(300 * time.Millisecond)
	start = time.Now()
	rs = waitHealthy(context.Background(), e, time.Minute, 10*time.Millisecond, func() bool { return time.Now().After(gone) })
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the wait went on for %s after a machine was gone", took)
	}
	if health.Healthy(rs) || !rs[0].Healthy || rs[1].Healthy || rs[1].Err == "" {
		t.Errorf("results %+v", rs)
	}
}

// TestGaveUpOnAGoneMachineOrAStoppedBoot: the wait's reason to stop is a
// member's QEMU that is not running, or a console that says the member
// stopped its boot.
func TestGaveUpOnAGoneMachineOrAStoppedBoot(t *testing.T) {
	dir := t.TempDir()
	self := testvm.Process{PID: os.Getpid(), Args: os.Args}
	if !self.Running() {
		t.Skip("this process is not seen as running by its command line")
	}
	console := filepath.Join(dir, "etcd-1-console.log")
	os.WriteFile(console, []byte("[   1.0] firstboot: node binary running (pid 1)\n"), 0o600)
	st := &State{Members: []MemberState{{Name: "etcd-1", QEMU: self, Console: console}}}
	if st.gaveUp() {
		t.Error("gave up on a running member that boots")
	}
	st.Members = append(st.Members, MemberState{Name: "etcd-2", Console: filepath.Join(dir, "none")})
	if !st.gaveUp() {
		t.Error("did not give up with a member's QEMU gone")
	}
	st.Members = st.Members[:1]
	os.WriteFile(console, []byte("[   2.5] firstboot: "+layout.ConsoleStopped+" no data disk\n"), 0o600)
	if !st.gaveUp() {
		t.Error("did not give up on a member that stopped its boot")
	}
}

// TestLANServices: an S3 endpoint at an address of the LAN that no
// member has is the same port on the host's loopback; any other
// endpoint is left alone.
func TestLANServices(t *testing.T) {
	for _, tc := range []struct {
		name, endpoint string
		want           []HostService
	}{
		{"on the LAN", "http://192.168.2.50:9000", []HostService{{LAN: netip.MustParseAddrPort("192.168.2.50:9000"), Host: "127.0.0.1:9000"}}},
		{"https without a port", "https://192.168.2.50", []HostService{{LAN: netip.MustParseAddrPort("192.168.2.50:443"), Host: "127.0.0.1:443"}}},
		{"http without a port", "http://192.168.2.50", []HostService{{LAN: netip.MustParseAddrPort("192.168.2.50:80"), Host: "127.0.0.1:80"}}},
		{"a member's address", "http://192.168.2.11:9000", nil},
		{"off the LAN", "http://10.0.0.5:9000", nil},
		{"a host name", "https://s3.example.com", nil},
		{"no S3", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := spec.Default(3)
			c.Members[0].IP = "192.168.2.11"
			c.Backup.S3 = nil
			if tc.endpoint != "" {
				c.Backup.S3 = &spec.S3{Endpoint: tc.endpoint, Bucket: "b"}
			}
			if got := LANServices(c); !slices.Equal(got, tc.want) {
				t.Errorf("LANServices = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestReachFollowsTheState: with no cluster under up the members are
// reached at their own addresses (nil); with one, at the forwarded
// loopback ports its state records, as are the host's services.
func TestReachFollowsTheState(t *testing.T) {
	dir := outdir.Layout(t.TempDir())
	if Reach(dir) != nil || HostServices(dir) != nil {
		t.Fatal("a directory with no cluster under up has forwarded ports")
	}
	os.MkdirAll(dir.RunDir(), 0o700)
	st := &State{RunDir: dir.RunDir(), Members: []MemberState{{Name: "etcd-1", Client: 40179, Metrics: 40181, Backup: 40183, NodeAPI: 40184}},
		HostServices: map[string]string{"192.168.2.50:9000": "127.0.0.1:9000"}}
	if err := st.save(); err != nil {
		t.Fatal(err)
	}
	reach := Reach(dir)
	m := spec.Member{Name: "etcd-1", IP: "192.168.2.11"}
	if got := reach(m, layout.ClientPort); got != "127.0.0.1:40179" {
		t.Errorf("client: %s", got)
	}
	if got := reach(m, layout.BackupPort); got != "127.0.0.1:40183" {
		t.Errorf("backup: %s", got)
	}
	if got := reach(m, layout.NodeAPIPort); got != "127.0.0.1:40184" {
		t.Errorf("node API: %s", got)
	}
	if got := HostServices(dir)["192.168.2.50:9000"]; got != "127.0.0.1:9000" {
		t.Errorf("host services: %v", HostServices(dir))
	}
}

// TestTableCountsStoppedMembers: status prints a row per member and
// counts those whose QEMU is not running.
func TestTableCountsStoppedMembers(t *testing.T) {
	st := &State{Accel: "tcg", MemoryMB: 256, Members: []MemberState{
		{Name: "etcd-1", IP: "192.168.2.51", QEMU: testvm.Process{PID: os.Getpid(), Args: os.Args}, Client: 40179, Metrics: 40181, Console: "c1"},
		{Name: "etcd-2", IP: "192.168.2.52", Client: 40279, Metrics: 40281, Console: "c2"},
	}}
	var b strings.Builder
	if n := st.Table(&b); n != 1 {
		t.Errorf("%d stopped, want 1", n)
	}
	for _, want := range []string{
		"LAN switch pid 0 (DOWN)",
		"MEMBER   IP              PID      STATE    CLIENT                   METRICS                  CONSOLE\n",
		"etcd-2   192.168.2.52    -        stopped  https://127.0.0.1:40279  http://127.0.0.1:40281   c2\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

// TestUpOptionsCheck refuses members too small to run, RAM first, and
// names the flag and the floor.
func TestUpOptionsCheck(t *testing.T) {
	for _, tc := range []struct {
		memory int
		data   spec.Size
		want   string
	}{
		{256, spec.GiB, ""},
		{128, 256 * spec.MiB, ""},
		{127, 100 * spec.MiB, "--memory 127: a member needs at least 128 MiB"},
		{128, 255 * spec.MiB, "--data-size 255MiB: a data disk needs at least 256MiB"},
	} {
		err := UpOptions{MemoryMB: tc.memory, DataSize: tc.data}.Check()
		if got := fmt.Sprint(err); (tc.want == "" && err != nil) || (tc.want != "" && got != tc.want) {
			t.Errorf("%d MiB, %s: %v, want %q", tc.memory, tc.data, err, tc.want)
		}
	}
}

// TestReadySaysHowToReachAndStopTheCluster: once healthy, up names the
// etcdctl environment, then how the cluster stops: `etcdimg down` when
// detached, else Ctrl-C.
func TestReadySaysHowToReachAndStopTheCluster(t *testing.T) {
	started := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for detach, last := range map[bool]string{
		true:  "running in the background; stop it with: etcdimg down --out out\n",
		false: "press Ctrl-C to power the cluster off (or run with --detach)\n",
	} {
		var w strings.Builder
		b := &Booted{Started: started, o: UpOptions{Cluster: spec.Default(1), Dir: "out", Detach: detach, Stdout: &w}}
		b.ready(started.Add(12340 * time.Millisecond))
		want := "cluster " + spec.Default(1).Name + " healthy in 12.3s; etcdctl: source " + filepath.Join("out", "run", "etcdctl.env") + ", or etcdimg etcdctl -- member list\n" + last
		if w.String() != want {
			t.Errorf("detach %v:\n%s\nwant\n%s", detach, w.String(), want)
		}
	}
}
