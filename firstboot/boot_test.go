package firstboot

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"etcdimg/firstboot/datadisk"
	"etcdimg/ignition"
	"etcdimg/internal/layout"
)

func TestParseUnitTheRunbooksEtcdService(t *testing.T) {
	u, err := ParseUnit("etcd.service", []byte(ignition.EtcdUnit()))
	if err != nil {
		t.Fatal(err)
	}
	if u.Type != "notify" || u.Restart != "on-failure" || u.RestartSec != 5*time.Second || u.LimitNOFILE != 65536 {
		t.Errorf("parsed %+v", u)
	}
	// etcd.conf, then firstboot's runtime overrides, optional (a host that
	// is not the appliance never has them), read last so that they win.
	want := []envFile{{Path: "/etc/etcd/etcd.conf"}, {Path: layout.RuntimeEnvPath, Optional: true}}
	if !slices.Equal(u.ExecStart, []string{"/usr/bin/etcd"}) || !slices.Equal(u.EnvironmentFile, want) {
		t.Errorf("parsed %+v", u)
	}
}

func TestParseUnitRefusesWhatItDoesNotRun(t *testing.T) {
	base := "[Service]\nExecStart=/usr/bin/etcd\n"
	for _, tc := range []struct{ name, unit, want string }{
		{"user", base + "User=etcd\n", "[Service] User= is not supported"},
		{"exec prefix", "[Service]\nExecStart=-/usr/bin/etcd\n", "prefixes"},
		{"relative", "[Service]\nExecStart=etcd\n", "absolute path"},
		{"two execstarts", base + "ExecStart=/bin/x\n", "second ExecStart"},
		{"forking", base + "Type=forking\n", "Type=forking is not supported"},
		{"restart", base + "Restart=on-abnormal\n", "Restart=on-abnormal"},
		{"no exec", "[Service]\nType=simple\n", "no ExecStart"},
		{"timer", base, "only .service"},
		{"bad line", base + "garbage\n", "not Key=Value"},
		{"bad env", base + "Environment=NOVALUE\n", "not NAME=VALUE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "x.service"
			if tc.name == "timer" {
				name = "x.timer"
			}
			_, err := ParseUnit(name, []byte(tc.unit))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestSplitCommand(t *testing.T) {
	got, err := splitCommand(`/usr/bin/etcd --name "etcd 1" 'a b' c\ d`)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/usr/bin/etcd", "--name", "etcd 1", "a b", "c d"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if _, err := splitCommand(`/bin/x "open`); err == nil {
		t.Error("unbalanced quote accepted")
	}
}

// TestServiceRestartsOnFailure runs a real process that fails, under the
// supervisor, and counts its restarts.
func TestServiceRestartsOnFailure(t *testing.T) {
	u, err := ParseUnit("fail.service", []byte("[Service]\nExecStart=/bin/false\nRestart=on-failure\nRestartSec=50ms\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := newService(u)
	if _, err := s.start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		n := s.starts
		s.mu.Unlock()
		if n >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("started %d times in 10s, want restarts", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.stop(5 * time.Second)

	// Restart=no runs it once.
	u, _ = ParseUnit("once.service", []byte("[Service]\nExecStart=/bin/false\n"))
	s = newService(u)
	_, exited := startProcess(t, s)
	<-exited
	time.Sleep(200 * time.Millisecond)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.starts != 1 {
		t.Errorf("Restart=no started %d times", s.starts)
	}
}

func TestEnvironmentFromFileAndDirectives(t *testing.T) {
	dir := t.TempDir()
	conf := dir + "/etcd.conf"
	writeFile(t, conf, `ETCD_NAME="etcd-1"`+"\n")
	u, err := ParseUnit("e.service", []byte("[Service]\nExecStart=/bin/true\nEnvironmentFile="+conf+"\nEnvironmentFile=-"+dir+"/missing\nEnvironment=A=1 \"B=two words\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	env, err := newService(u).environment()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ETCD_NAME=etcd-1", "A=1", "B=two words", "PATH=/usr/bin:/bin"} {
		if !slices.Contains(env, want) {
			t.Errorf("env %q lacks %q", env, want)
		}
	}
	u.EnvironmentFile[1].Optional = false
	if _, err := newService(u).environment(); err == nil {
		t.Error("a missing required EnvironmentFile was accepted")
	}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestTheDeviceWindowFollowsTheConfigSource: a machine QEMU started with
// the config on fw_cfg has its disks from power-on and waits 2 s for a
// labelled one; any other (an image's own config, a cloud's user-data)
// waits the whole 10 s.
func TestTheDeviceWindowFollowsTheConfigSource(t *testing.T) {
	for _, tc := range []struct {
		from string
		want time.Duration
	}{
		{"fw_cfg opt/com.coreos/config, 4551 bytes, Ignition 3.4.0", datadisk.LaunchedDeviceWait},
		{"ESP /etcdimg/node.ign, 4551 bytes, Ignition 3.4.0", datadisk.DeviceWait},
		{"aws user-data, 4551 bytes, Ignition 3.4.0", datadisk.DeviceWait},
		{"", datadisk.DeviceWait},
	} {
		if got := deviceWindowFor(tc.from); got != tc.want {
			t.Errorf("%q: %s, want %s", tc.from, got, tc.want)
		}
	}
}

// TestTheBootRunsItsStepsInOrder pins the declared boot. The order is
// the data-safety contract of PID 1: everything that can refuse the
// config (reading it, its units, its address, the identity) comes before
// anything touches a disk ("prepare data disk"), and the cluster state is
// decided only once the data disk was checked. Reordering the list is a
// change of behaviour and must change this test on purpose.
func TestTheBootRunsItsStepsInOrder(t *testing.T) {
	var got []string
	for _, s := range bootSteps {
		got = append(got, s.name)
	}
	want := []string{
		"mount kernel file systems", "watch the power button", "detect the platform", "check boot slot",
		"configure network (platform)", "read config", "check units", "apply config", "set hostname",
		"read network files", "check address", "report ready", "configure network",
		"choose clock sources", "sync clock", "keep the clock", "read member identity", "serve node API",
		"prepare data disk", "check data disk", "grow data disk", "decide cluster state", "start units", "watch the trial",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("the boot's steps are\n%q\nwant\n%q", got, want)
	}
	disk := slices.Index(got, "prepare data disk")
	for _, refuses := range []string{"check boot slot", "read config", "check units", "apply config", "check address", "read member identity"} {
		if i := slices.Index(got, refuses); i < 0 || i > disk {
			t.Errorf("%q runs after the data disk is touched", refuses)
		}
	}
}
