package firstboot

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"etcdimg/ignition"
	"etcdimg/internal/layout"
	"etcdimg/internal/spec"
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

func TestParseNetworkFileTheRenderedOne(t *testing.T) {
	c := spec.Default(3)
	c.Network.DNS = []string{"192.168.2.1", "192.168.2.2"}
	nf, err := ParseNetworkFile(ignition.NetworkFile(c, c.Members[1]))
	if err != nil {
		t.Fatal(err)
	}
	if nf.Address != netip.MustParsePrefix("192.168.2.52/24") || nf.Gateway != netip.MustParseAddr("192.168.2.1") || len(nf.DNS) != 2 {
		t.Errorf("parsed %+v", nf)
	}
	if !nf.matches("eth0") || !nf.matches("ens3") || nf.matches("lo") || nf.matches("wlan0") {
		t.Errorf("name matching wrong for %v", nf.Names)
	}
	if _, err := ParseNetworkFile([]byte("[Network]\nAddress=10.0.0.2/24\nDHCP=yes\n")); err == nil || !strings.Contains(err.Error(), "DHCP= is not supported") {
		t.Errorf("DHCP: %v", err)
	}
	if _, err := ParseNetworkFile([]byte("[Match]\nName=eth0\n")); err == nil {
		t.Error("a file without Address= was accepted")
	}
}

func TestPickDataDisk(t *testing.T) {
	esp := blockDev{Name: "vda1", IsPart: true, Parent: "vda", Partname: "ESP"}
	for _, tc := range []struct {
		name string
		devs []blockDev
		want string
	}{
		{"second disk", []blockDev{{Name: "vda"}, esp, {Name: "vdb"}}, "/dev/vdb"},
		{"labelled partition wins", []blockDev{{Name: "vda"}, esp, {Name: "vda2", IsPart: true, Parent: "vda", Partname: "etcd-data"}, {Name: "vdb"}}, "/dev/vda2"},
		{"a disk with partitions is not ours", []blockDev{{Name: "vda"}, esp, {Name: "vdb"}, {Name: "vdb1", IsPart: true, Parent: "vdb"}}, ""},
		{"only the boot disk", []blockDev{{Name: "vda"}, esp}, ""},
		{"loop devices are not disks", []blockDev{{Name: "vda"}, esp, {Name: "loop0"}}, ""},
		{"our data disk, whatever the probe order", []blockDev{{Name: "nvme0n1"}, {Name: "nvme1n1"}, {Name: "nvme2n1", FSType: "ext4", Label: "etcd-data"}, {Name: "nvme0n1p1", IsPart: true, Parent: "nvme0n1", Partname: "ESP"}}, "/dev/nvme2n1"},
		{"a config drive is not a data disk", []blockDev{{Name: "vda"}, esp, {Name: "vdb", FSType: "vfat", Label: "config-2"}, {Name: "vdc"}}, "/dev/vdc"},
		{"nvme", []blockDev{{Name: "nvme0n1"}, {Name: "nvme0n1p1", IsPart: true, Parent: "nvme0n1", Partname: "ESP"}, {Name: "nvme1n1"}}, "/dev/nvme1n1"},
	} {
		got, ok := pickDataDisk(tc.devs)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("%s: got %q %v, want %q", tc.name, got, ok, tc.want)
		}
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
