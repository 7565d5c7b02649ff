package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdimg/firstboot"
	"etcdimg/internal/cloudsim"
	"etcdimg/internal/layout"
	"etcdimg/testvm"
)

// cloudCase is one boot of a generic cloud image, run in a network
// namespace of its own (see runCloudCase).
type cloudCase struct {
	Name       string
	Platform   string
	Image      string
	Format     string // as QEMU names it
	Bus        string
	UserData   string // the file the instance is started with, "" for none
	Garbage    string // what the metadata service answers instead, if set
	Silent     bool   // the metadata service accepts and never answers
	RTCBase    string // the instance's hardware clock starts at this date
	WantClock  string // the console line of the clock step
	Encode     string // "gzip+base64" to pass the config so
	DriveISO   string // an OpenStack config drive to attach
	DHCPStart  string // the address the instance gets
	Data       string // its data disk
	Dir        string
	CA         string
	Cert, Key  string
	Want       string // the console line that ends the boot
	WantHealth bool   // a healthy member that takes writes
	WantReady  bool   // Azure: Ready reported to the wire server
	// Upgrade, once the member is healthy, runs `etcdimg upgrade
	// --platform` (the Etcdimg binary, the UpgradeSpec, a copy of the
	// output directory Out) and checks that the member boots its new
	// slot from the slot's own config, not from its user-data, which
	// then answers garbage.
	Upgrade     bool
	Etcdimg     string
	UpgradeSpec string
	Out         string
}

// cloudCaseEnv carries a case to the test binary re-run inside the
// namespace.
const cloudCaseEnv = "ETCDIMG_E2E_CLOUD_CASE"

// TestCloudImagesBootFromTheirPlatformsUserData builds one generic image
// per platform and boots each as its cloud would: no config inside, none
// through fw_cfg, an address by DHCP, the member's config as user-data
// from a simulation of that platform's documented metadata interface at
// 169.254.169.254 (Azure's wire server at 168.63.129.16), each in a
// network namespace the test makes (unshare -n), so that those addresses
// are the test's own. AWS boots from NVMe disks (Nitro), GCP from
// virtio-SCSI disks; Azure from the
// fixed VHD; OpenStack from qcow2 with a config drive. A metadata service
// that answers garbage, one that never answers, and an instance given
// another member's address stop the boot (the first two after a minute of
// retries) with a console line, their data disks untouched.
func TestCloudImagesBootFromTheirPlatformsUserData(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatal("unshare (util-linux) is missing")
	}
	work := t.TempDir()
	spec := filepath.Join(work, "one.yaml")
	os.WriteFile(spec, []byte(oneMemberSpec), 0o644)
	out := filepath.Join(work, "out")
	for _, b := range []struct{ platform, formats string }{
		{"aws", "raw"}, {"gcp", "raw,gce"}, {"azure", "vhd"}, {"openstack", "qcow2"},
	} {
		stdout, stderr, code := etcdimg(t, work, "build", "--config", spec, "--out", out, "--platform", b.platform, "--format", b.formats)
		if code != 0 {
			t.Fatalf("build --platform %s: exit %d: %s", b.platform, code, stderr)
		}
		if b.platform == "aws" {
			t.Logf("build --platform aws:\n%s", stdout)
		}
	}
	images := filepath.Join(out, "images")
	if _, err := os.Stat(filepath.Join(images, "etcd-1.img")); err == nil {
		t.Error("a cloud build wrote a member image")
	}
	userData := filepath.Join(out, "ignition", "etcd-1.ign")
	iso := filepath.Join(work, "config-drive.iso")
	ud, _ := os.ReadFile(userData)
	if err := cloudsim.ConfigDrive(iso, ud, "iso9660"); err != nil {
		t.Fatal(err)
	}
	pki := filepath.Join(out, "pki")
	base := cloudCase{
		UserData: userData, DHCPStart: "192.168.2.51",
		CA: filepath.Join(pki, "etcd-ca.pem"), Cert: filepath.Join(pki, "admin.pem"), Key: filepath.Join(pki, "admin-key.pem"),
		Want: consoleReady, WantHealth: true, Format: "raw",
	}
	cases := []cloudCase{
		// The clock starts years behind: without AWS's time source the
		// member would refuse the admin certificate as not yet valid.
		{Name: "aws-nvme", Platform: "aws", Image: "etcdimg-aws.raw", Bus: "nvme", RTCBase: "2021-06-01",
			WantClock: "sync clock: AWS Time Sync Service 169.254.169.123: stepped by"},
		{Name: "gcp-scsi", Platform: "gcp", Image: "etcdimg-gcp.raw", Bus: "scsi", Encode: "gzip+base64"},
		{Name: "azure", Platform: "azure", Image: "etcdimg-azure.vhd", Format: "vpc", WantReady: true},
		{Name: "openstack", Platform: "openstack", Image: "etcdimg-openstack.qcow2", Format: "qcow2", DriveISO: iso},
		{Name: "aws-garbage", Platform: "aws", Image: "etcdimg-aws.raw", Garbage: "<html>502 Bad Gateway</html>",
			Want: firstboot.MsgStopped + " read config: no usable config after 1m0s"},
		{Name: "gcp-silent", Platform: "gcp", Image: "etcdimg-gcp.raw", Silent: true,
			Want: firstboot.MsgStopped + " read config: no usable config after 1m0s"},
		{Name: "aws-wrong-address", Platform: "aws", Image: "etcdimg-aws.raw", DHCPStart: "192.168.2.60",
			Want: firstboot.MsgStopped + " check address: the instance's address 192.168.2.60 (DHCP) is not this member's spec address 192.168.2.51"},
		// Upgraded over the network, a cloud member boots its new slot's
		// config from then on: its user-data seeded the first boot only.
		{Name: "aws-upgrade", Platform: "aws", Image: "etcdimg-aws.raw", Upgrade: true},
	}
	upgradeSpec := filepath.Join(work, "upgrade.yaml")
	os.WriteFile(upgradeSpec, []byte(oneMemberSpec+"upgrade: {goodAfter: 5s}\n"), 0o644)
	// The cases that find no usable config spend most of configWait
	// (a minute) idle: they share one of the test's parallel slots.
	var idle []cloudCase
	for _, c := range cases {
		c := mergeCase(base, c)
		c.Image = filepath.Join(images, c.Image)
		c.Dir = filepath.Join(work, c.Name)
		c.Data = filepath.Join(c.Dir, "data.img")
		if c.Upgrade {
			c.Etcdimg, c.UpgradeSpec, c.Out = bin.etcdimg, upgradeSpec, filepath.Join(c.Dir, "out")
			copyOutputDir(t, out, c.Out)
			// The member writes its new slot on its own copy.
			own := filepath.Join(c.Dir, filepath.Base(c.Image))
			if b, err := exec.Command("cp", "--sparse=always", c.Image, own).CombinedOutput(); err != nil {
				t.Fatalf("cp: %v: %s", err, b)
			}
			c.Image = own
		}
		if c.Garbage != "" || c.Silent {
			idle = append(idle, c)
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			vmCase(t)
			runCloudCase(t, c)
		})
	}
	t.Run("no-usable-config", func(t *testing.T) {
		vmCase(t)
		var wg sync.WaitGroup
		for _, c := range idle {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t.Run(c.Name, func(t *testing.T) { runCloudCase(t, c) })
			}()
		}
		wg.Wait()
	})
}

func mergeCase(base, c cloudCase) cloudCase {
	if c.Format == "" {
		c.Format = base.Format
	}
	if c.DHCPStart == "" {
		c.DHCPStart = base.DHCPStart
	}
	if c.Want == "" {
		c.Want, c.WantHealth = base.Want, base.WantHealth
	}
	c.UserData, c.CA, c.Cert, c.Key = base.UserData, base.CA, base.Cert, base.Key
	return c
}

// runCloudCase re-runs the test binary under `unshare -n` with the case
// in its environment (TestMain hands it to cloudCaseMain), and kills the
// case's QEMU by PID if the run ends any other way.
func runCloudCase(t testing.TB, c cloudCase) {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(c)
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--net", "--", os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), cloudCaseEnv+"="+string(b))
	outb, err := cmd.CombinedOutput()
	if pid, perr := os.ReadFile(filepath.Join(c.Dir, "qemu.pid")); perr == nil {
		if p, _ := strconv.Atoi(strings.TrimSpace(string(pid))); p > 0 && testvm.Alive(p) {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
	t.Logf("%s:\n%s", c.Name, outb)
	if err != nil {
		t.Fatalf("%s: %v", c.Name, err)
	}
}

// cloudCaseMain runs one case inside its network namespace and exits:
// 0 when the boot went as the case wants.
func cloudCaseMain(raw string) int {
	var c cloudCase
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		fmt.Println(err)
		return 2
	}
	if err := cloudCaseRun(c); err != nil {
		fmt.Println("FAIL:", err)
		if con, _ := os.ReadFile(filepath.Join(c.Dir, "etcd-1-console.log")); len(con) > 0 {
			fmt.Printf("--- console tail ---\n%s\n", lastLines(string(con), 40))
		}
		return 1
	}
	return 0
}

func cloudCaseRun(c cloudCase) error {
	// The namespace's loopback carries the metadata addresses.
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	for _, a := range []string{layout.MetadataAddr, layout.AzureWireServer, "169.254.169.123"} {
		addr, _ := netlink.ParseAddr(a + "/32")
		if err := netlink.AddrAdd(lo, addr); err != nil {
			return fmt.Errorf("add %s to lo: %w", a, err)
		}
	}
	sim := &cloudsim.Server{Platform: c.Platform}
	if c.Garbage != "" {
		sim.Garbage = []byte(c.Garbage)
	}
	if c.UserData != "" && c.DriveISO == "" {
		b, err := os.ReadFile(c.UserData)
		if err != nil {
			return err
		}
		if c.Encode == "gzip+base64" {
			b = []byte(base64Gzip(b))
		}
		sim.UserData = b
	}
	md := sim.Metadata()
	if c.Silent {
		md = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	}
	for addr, h := range map[string]http.Handler{layout.MetadataAddr: md, layout.AzureWireServer: sim.WireServer()} {
		ln, err := net.Listen("tcp", addr+":80")
		if err != nil {
			return err
		}
		go http.Serve(ln, h)
	}
	// AWS's Time Sync Service and GCP's metadata server answer NTP.
	for _, a := range []string{"169.254.169.123", layout.MetadataAddr} {
		pc, err := net.ListenPacket("udp", a+":123")
		if err != nil {
			return err
		}
		go cloudsim.ServeNTP(pc, 0)
	}
	client, err := testvm.FreePort()
	if err != nil {
		return err
	}
	forwards := []testvm.Forward{{Host: client, Guest: layout.ClientPort}}
	if c.Upgrade {
		// upgrade reaches the member at its spec address, as on a cloud.
		for _, p := range []int{layout.MetricsPort, layout.NodeMetricsPort, layout.BackupPort, layout.NodeAPIPort} {
			hp, err := testvm.FreePort()
			if err != nil {
				return err
			}
			forwards = append(forwards, testvm.Forward{Host: hp, Guest: p})
		}
	}
	vm, err := testvm.Start(testvm.Options{
		Name: "etcd-1", Dir: c.Dir, Image: c.Image, ImageFormat: c.Format, DataDisk: c.Data, Bus: c.Bus,
		Accel: "tcg", MemoryMB: guestMemoryMB, DHCP: true,
		Network: netip.MustParsePrefix("192.168.2.0/24"), HostIP: netip.MustParseAddr("192.168.2.1"),
		GuestIP:    netip.MustParseAddr(c.DHCPStart),
		Forwards:   forwards,
		ExtraDisks: nonEmpty(c.DriveISO),
		RTCBase:    c.RTCBase,
		Writable:   c.Upgrade, Reboot: c.Upgrade,
	})
	if err != nil {
		return err
	}
	defer vm.Kill()
	os.WriteFile(filepath.Join(c.Dir, "qemu.pid"), []byte(strconv.Itoa(vm.PID())), 0o600)
	fmt.Println("QEMU:", vm.CommandLine())
	if err := vm.WaitConsole(c.Want, bootTimeout); err != nil {
		return fmt.Errorf("no %q: %w", c.Want, err)
	}
	con, _ := os.ReadFile(vm.Console)
	fmt.Printf("--- console, firstboot lines ---\n%s\n", grepLines(string(con), firstboot.Console))
	if strings.Contains(string(con), "read config: fw_cfg") || strings.Contains(string(con), "read config: ESP") {
		return errors.New("the generic image read a config that is not its user-data")
	}
	if !c.WantHealth {
		// The boot stopped before the data disk: not one block written.
		if st, err := os.Stat(c.Data); err == nil && st.Sys().(*syscall.Stat_t).Blocks != 0 {
			return fmt.Errorf("the data disk of a stopped boot has %d blocks written", st.Sys().(*syscall.Stat_t).Blocks)
		}
		return nil
	}
	if !strings.Contains(string(con), "(DHCP)") || !strings.Contains(string(con), "is this member's spec address") {
		return errors.New("the console does not show the DHCP lease and its check")
	}
	tc, err := loadTLS(c.CA, c.Cert, c.Key)
	if err != nil {
		return err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{fmt.Sprintf("https://127.0.0.1:%d", client)}, TLS: tc, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := cli.Put(ctx, "/cloud/"+c.Platform, "ok"); err != nil {
		return fmt.Errorf("put: %w", err)
	}
	if r, err := cli.Get(ctx, "/cloud/"+c.Platform); err != nil || len(r.Kvs) != 1 {
		return fmt.Errorf("get: %v %v", r, err)
	}
	if c.WantClock != "" && !strings.Contains(string(con), c.WantClock) {
		return fmt.Errorf("no %q on the console", c.WantClock)
	}
	if c.WantReady {
		if r := sim.Reports(); len(r) != 1 || r[0] != "Ready" {
			return fmt.Errorf("wire server reports %v, want [Ready]", r)
		}
	}
	fmt.Println("healthy: wrote and read /cloud/" + c.Platform)
	if c.Upgrade {
		return cloudUpgrade(c, sim, vm, lo, forwards, cli)
	}
	return nil
}

// cloudUpgrade upgrades the cloud member over the network and checks
// that it booted the new slot from the slot's config: its user-data
// answers garbage from before the reboot on and is never asked again.
func cloudUpgrade(c cloudCase, sim *cloudsim.Server, vm *testvm.VM, lo netlink.Link, forwards []testvm.Forward, cli *clientv3.Client) error {
	// The member's spec address is the namespace's own, relayed to
	// QEMU's forwards: upgrade dials 192.168.2.51 as it would a cloud
	// instance, and the member's certificate names that address.
	addr, _ := netlink.ParseAddr(c.DHCPStart + "/32")
	if err := netlink.AddrAdd(lo, addr); err != nil {
		return fmt.Errorf("add %s to lo: %w", c.DHCPStart, err)
	}
	for _, f := range forwards {
		ln, err := net.Listen("tcp", net.JoinHostPort(c.DHCPStart, strconv.Itoa(f.Guest)))
		if err != nil {
			return err
		}
		defer ln.Close()
		go relay(ln, fmt.Sprintf("127.0.0.1:%d", f.Host))
	}
	sim.SetGarbage([]byte("<html>502 Bad Gateway</html>"))
	asked := sim.Asked()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Etcdimg, "upgrade", "--platform", c.Platform, "--allow-outage", "--config", c.UpgradeSpec, "--out", c.Out)
	out, err := cmd.CombinedOutput()
	fmt.Printf("--- etcdimg upgrade --platform %s ---\n%s\n", c.Platform, out)
	if err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	if !strings.Contains(string(out), "marked it good") {
		return errors.New("upgrade did not say the member marked its new slot good")
	}
	con, _ := os.ReadFile(vm.Console)
	fmt.Printf("--- console, firstboot lines ---\n%s\n", grepLines(string(con), firstboot.Console))
	want := "(the booted slot's; the user-data seeded the first boot only)"
	if !strings.Contains(string(con), want) {
		return fmt.Errorf("no %q on the console after the upgrade", want)
	}
	if n := sim.Asked(); n != asked {
		return fmt.Errorf("the upgraded member asked for its user-data %d times", n-asked)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	if r, err := cli.Get(ctx2, "/cloud/"+c.Platform); err != nil || len(r.Kvs) != 1 {
		return fmt.Errorf("get after the upgrade: %v %v", r, err)
	}
	fmt.Println("upgraded: the member boots its slot's config and kept /cloud/" + c.Platform)
	return nil
}

// relay copies each connection ln accepts to and from to.
func relay(ln net.Listener, to string) {
	for {
		a, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer a.Close()
			b, err := net.Dial("tcp", to)
			if err != nil {
				return
			}
			defer b.Close()
			go io.Copy(b, a)
			io.Copy(a, b)
		}()
	}
}

// copyOutputDir copies an output directory without its images (an
// upgrade builds its own).
func copyOutputDir(t *testing.T, from, to string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == "images" {
			continue
		}
		if b, err := exec.Command("cp", "-a", filepath.Join(from, e.Name()), to).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v: %s", err, b)
		}
	}
}

func nonEmpty(s ...string) []string {
	var out []string
	for _, x := range s {
		if x != "" {
			out = append(out, x)
		}
	}
	return out
}

func loadTLS(ca, cert, key string) (*tls.Config, error) {
	return transport.TLSInfo{TrustedCAFile: ca, CertFile: cert, KeyFile: key}.ClientConfig()
}

// base64Gzip encodes user-data as the clouds' CLIs often pass it.
func base64Gzip(b []byte) string {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return base64.StdEncoding.EncodeToString(buf.Bytes())
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
