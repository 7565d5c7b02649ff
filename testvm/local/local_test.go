package local

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"etcdimg/internal/layout"
	"etcdimg/testvm"
)

func TestGatewayAddrsAvoidMembersAndGateway(t *testing.T) {
	o := Options{
		Network:  netip.MustParsePrefix("192.168.2.0/24"),
		Reserved: []netip.Addr{netip.MustParseAddr("192.168.2.254")},
		Members:  []MemberSpec{{IP: netip.MustParseAddr("192.168.2.253")}},
	}
	got, err := gatewayAddrs(o)
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Addr{netip.MustParseAddr("192.168.2.252"), netip.MustParseAddr("192.168.2.251")}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	o.Network = netip.MustParsePrefix("192.168.2.252/30")
	if _, err := gatewayAddrs(o); err == nil {
		t.Error("a /30 with a member and a reserved address had room")
	}
}

func TestPorts(t *testing.T) {
	if c, m := Ports(40000, 3); c != 40379 || m != 40381 {
		t.Errorf("Ports(40000, 3) = %d, %d", c, m)
	}
	if p := PeerPort(40000, 3); p != 40380 {
		t.Errorf("PeerPort(40000, 3) = %d", p)
	}
	if nm, b := NodePorts(40000, 3); nm != 40382 || b != 40383 {
		t.Errorf("NodePorts(40000, 3) = %d, %d", nm, b)
	}
	if p := NodeAPIPort(40000, 3); p != 40384 {
		t.Errorf("NodeAPIPort(40000, 3) = %d", p)
	}
	if got, want := HostPorts(40000, 3), []int{40379, 40380, 40381, 40382, 40383, 40384}; !slices.Equal(got, want) {
		t.Errorf("HostPorts(40000, 3) = %v, want %v", got, want)
	}
}

// TestBootRefusesEveryTakenPort: Boot names a forwarded port that is
// taken before it starts anything, whichever of a member's ports it is
// (the peer port was once left out of the check).
func TestBootRefusesEveryTakenPort(t *testing.T) {
	for _, p := range HostPorts(0, 1) {
		t.Run(fmt.Sprint(p), func(t *testing.T) {
			for _, base := range quietBases() {
				l, ok := takeOnly(base, p)
				if !ok {
					continue
				}
				dir := t.TempDir()
				_, err := Boot(Options{
					RunDir: filepath.Join(dir, "run"), DiskDir: filepath.Join(dir, "disks"),
					Network: netip.MustParsePrefix("192.168.2.0/24"), Accel: "tcg", PortBase: base,
					Members: []MemberSpec{{Name: "etcd-1", IP: netip.MustParseAddr("192.168.2.11"), Image: filepath.Join(dir, "none.img")}},
				})
				l.Close()
				if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("port %d for etcd-1", base+p)) && strings.Contains(err.Error(), "for etcd-1: listen") {
					continue // another process took one of this base's other ports meanwhile
				}
				if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("port %d for etcd-1", base+p)) {
					t.Fatalf("Boot with port %d taken: %v", base+p, err)
				}
				if entries, _ := os.ReadDir(dir); len(entries) != 0 {
					t.Errorf("Boot left %d entries behind", len(entries))
				}
				return
			}
			t.Skip("no base with every port free")
		})
	}
}

// quietBases are port bases whose member ports lie below the kernel's
// ephemeral range, where no outgoing connection takes one between the
// check and Boot (CI once lost this test to 42182, a source port), and
// apart from the e2e tests' bases (multiples of 1000).
func quietBases() []int {
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		fmt.Sscan(string(b), &lo)
	}
	var bases []int
	for base := 20700; base+200 < lo; base += 1000 {
		bases = append(bases, base)
	}
	return append(bases, 42700, 43700, 44700)
}

// takeOnly listens on member 1's port base+p and checks the member's
// other ports are free; ok is false when any is not.
func takeOnly(base, p int) (net.Listener, bool) {
	var held net.Listener
	for _, q := range HostPorts(base, 1) {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", q))
		if err != nil {
			if held != nil {
				held.Close()
			}
			return nil, false
		}
		if q == base+p {
			held = l
		} else {
			l.Close()
		}
	}
	return held, true
}

// TestLockRefusesASecondCommand: two commands on one run directory never
// both hold it; the second is told who holds it, and gets it once the
// first lets go.
func TestLockRefusesASecondCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	first, err := LockRunDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LockRunDir(dir); err == nil || !strings.Contains(err.Error(), "another etcdimg command (pid") {
		t.Fatalf("second lock: %v", err)
	}
	first.Unlock()
	second, err := LockRunDir(dir)
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	second.Unlock()
}

// TestSaveUsesPrivateTempFiles: concurrent saves of one state never share
// a temporary name, so none deletes another's file, and the state file is
// always whole JSON.
func TestSaveUsesPrivateTempFiles(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := &State{RunDir: dir, MemoryMB: i}
			errs <- st.save()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, StateFile))
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("state file: %v\n%s", err, b)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// TestProcessMatchesTheExactCommandLine: a record names its process by
// PID and whole command line, so a process whose arguments merely contain
// the same words (another directory's VM with the same relative --out)
// is not taken for it.
func TestProcessMatchesTheExactCommandLine(t *testing.T) {
	// cat blocks on its stdin before it looks at the file argument.
	cmd := exec.Command("cat", "-", "run/etcd-1.img")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	p := testvm.Process{PID: cmd.Process.Pid, Args: cmd.Args}
	// The parent of a vfork resumes before the kernel has set the new
	// program's argument area: wait (bounded) until the command line is
	// readable at all.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID)); len(b) > 0 {
			break
		}
	}
	if !p.Running() {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
		t.Fatalf("the recorded process is not seen running: %q vs %q", b, p.Args)
	}
	for _, other := range [][]string{
		{"cat", "-"},
		{"cat", "-", "etcd-1.img"},
		{"cat", "-", "run/etcd-1.img", "x"},
	} {
		if (testvm.Process{PID: cmd.Process.Pid, Args: other}).Running() {
			t.Errorf("%q taken for %q", other, cmd.Args)
		}
	}
	if (testvm.Process{PID: cmd.Process.Pid}).Signal(9) {
		t.Error("a record without a command line signalled a process")
	}
	cmd.Process.Kill()
	cmd.Wait()
	if testvm.WaitGone(p.PID, 5*time.Second); p.Running() {
		t.Error("a dead process is seen running")
	}
}

// TestUpStoresAbsolutePaths: the state names every file absolutely, so a
// command run from another directory finds them.
func TestUpStoresAbsolutePaths(t *testing.T) {
	work := t.TempDir()
	t.Chdir(work)
	st := &State{RunDir: work}
	os.WriteFile(filepath.Join(work, "etcd-1.img"), nil, 0o600)
	st.Members = []MemberState{{Name: "etcd-1", Image: "x"}}
	if err := st.SetImage("etcd-1", "etcd-1.img"); err != nil {
		t.Fatal(err)
	}
	m, _ := st.Member("etcd-1")
	if !filepath.IsAbs(m.Image) || m.Image != filepath.Join(work, "etcd-1.img") {
		t.Errorf("image recorded as %q", m.Image)
	}
}

// TestStoppedFindsTheMemberThatGaveUp: a member that stops its boot says
// why on its console; Stopped names it and the reason, wherever the line
// is in the console's tail, and nothing while no member has.
func TestStoppedFindsTheMemberThatGaveUp(t *testing.T) {
	dir := t.TempDir()
	st := &State{}
	for i, text := range []string{
		"[   1.0] firstboot: node binary running (pid 1)\n",
		strings.Repeat("etcd: a line\n", 10000) + "[   2.5] firstboot: " + layout.ConsoleStopped + " run /boot/etcdimg/etcdnode: no such file or directory\n[   2.6] firstboot: no disk was written; powering off in 5m0s\n",
	} {
		path := filepath.Join(dir, fmt.Sprintf("etcd-%d-console.log", i+1))
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		st.Members = append(st.Members, MemberState{Name: fmt.Sprintf("etcd-%d", i+1), Console: path})
	}
	if _, _, ok := (&State{Members: st.Members[:1]}).Stopped(); ok {
		t.Error("a member booting normally counts as stopped")
	}
	name, why, ok := st.Stopped()
	if !ok || name != "etcd-2" || why != "run /boot/etcdimg/etcdnode: no such file or directory" {
		t.Errorf("Stopped() = %q, %q, %v", name, why, ok)
	}
}
