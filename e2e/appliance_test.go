package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdimg/firstboot"
	"etcdimg/ignition/ign"
	"etcdimg/image"
	"etcdimg/image/deb"
	"etcdimg/internal/layout"
	"etcdimg/internal/slot"
	"etcdimg/pki"
	"etcdimg/testvm"
)

// Console milestones firstboot prints.
var (
	consoleReady   = "etcd.service: " + firstboot.MsgReady
	consoleStopped = firstboot.Console + " " + firstboot.MsgStopped
)

const oneMemberSpec = "members:\n  - {name: etcd-1, ip: 192.168.2.51}\n"

// guestMemoryMB is each member's RAM: the appliance's target.
const guestMemoryMB = 256

// bootTimeout bounds every wait on a booting member under TCG.
const bootTimeout = 3 * time.Minute

// buildOne builds a one-member cluster's image into work/out.
func buildOne(t *testing.T, work string) string {
	t.Helper()
	spec := filepath.Join(work, "one.yaml")
	os.WriteFile(spec, []byte(oneMemberSpec), 0o644)
	out := filepath.Join(work, "out")
	stdout, stderr, code := etcdimg(t, work, "build", "--config", spec, "--out", out)
	if code != 0 {
		t.Fatalf("build: exit %d: %s", code, stderr)
	}
	t.Logf("build:\n%s", stdout)
	return out
}

// member is a booted one-member VM and its forwarded ports.
type vmMember struct {
	vm              *testvm.VM
	client, metrics int
}

// bootVM boots image with data as its data disk under TCG; config, if
// set, goes in through fw_cfg. The VM is killed by PID at the end of the
// test, and its console tail printed if the test failed.
func bootVM(t testing.TB, dir, img, data, config string) *vmMember {
	t.Helper()
	return bootVMWithMemory(t, dir, img, data, config, guestMemoryMB)
}

// bootVMWithMemory is bootVM with memoryMB of guest RAM.
func bootVMWithMemory(t testing.TB, dir, img, data, config string, memoryMB int) *vmMember {
	t.Helper()
	client, err := testvm.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := testvm.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	vm, err := testvm.Start(testvm.Options{
		Name: "etcd-1", Dir: dir, Image: img, DataDisk: data, Config: config,
		Accel:    "tcg",
		MemoryMB: memoryMB,
		Network:  netip.MustParsePrefix("192.168.2.0/24"), HostIP: netip.MustParseAddr("192.168.2.1"),
		GuestIP:  netip.MustParseAddr("192.168.2.51"),
		Forwards: []testvm.Forward{{Host: client, Guest: 2379}, {Host: metrics, Guest: 2381}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			t.Logf("QEMU: %s\n--- %s console tail ---\n%s", vm.CommandLine(), vm.Opts.Name, vm.Tail(60))
		}
	})
	return &vmMember{vm: vm, client: client, metrics: metrics}
}

func sha(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}

// espFile reads a file from the image's EFI system partition with
// go-diskfs.
func espFile(t testing.TB, img, path string) []byte {
	t.Helper()
	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	fs, err := d.GetFilesystem(1)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenFile(path, os.O_RDONLY)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBuildWritesAVerifiableImage checks the image with the system tools
// and looks inside it.
func TestBuildWritesAVerifiableImage(t *testing.T) {
	work := t.TempDir()
	out := buildOne(t, work)
	img := filepath.Join(out, "images", "etcd-1.img")
	st, _ := os.Stat(img)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("image mode %v, want 0600 (it holds the member key)", st.Mode())
	}

	// The partition table, by sfdisk.
	dump, err := exec.Command("sfdisk", "--dump", img).CombinedOutput()
	if err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, dump)
	}
	if !strings.Contains(string(dump), "label: gpt") || !strings.Contains(string(dump), "type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B") || !strings.Contains(string(dump), `name="ESP"`) {
		t.Errorf("partition table:\n%s", dump)
	}
	// The ESP, by fsck.vfat, on a copy of the partition's bytes.
	var start, size int64
	for _, line := range strings.Split(string(dump), "\n") {
		if strings.Contains(line, "start=") {
			fmt.Sscanf(strings.Fields(strings.SplitN(line, ":", 2)[1])[1], "%d,", &start)
			fmt.Sscanf(strings.Fields(strings.SplitN(line, ":", 2)[1])[3], "%d,", &size)
		}
	}
	raw, _ := os.ReadFile(img)
	if start == 0 || size == 0 || (start+size)*512 > int64(len(raw)) {
		t.Fatalf("partition start %d size %d", start, size)
	}
	esp := filepath.Join(work, "esp.img")
	os.WriteFile(esp, raw[start*512:(start+size)*512], 0o600)
	if out, err := exec.Command("fsck.vfat", "-n", esp).CombinedOutput(); err != nil {
		t.Errorf("fsck.vfat: %v\n%s", err, out)
	}

	// The boot loader is where UEFI looks on removable media:
	// systemd-boot, which boots the image's one slot. The slot is a
	// unified kernel image (the kernel, the initramfs and a command line
	// naming the slot) and a directory with the node binary and config,
	// listed in a manifest signed with the directory's image-signing key.
	if loader := espFile(t, img, image.LoaderPath); !bytes.Contains(loader, []byte("#### LoaderInfo: systemd-boot")) {
		t.Errorf("%s is not systemd-boot", image.LoaderPath)
	}
	if conf := espFile(t, img, image.LoaderConfPath); !bytes.Contains(conf, []byte("default etcdimg-*")) {
		t.Errorf("loader.conf: %q", conf)
	}
	bundle, man, err := image.ReadSlot(img)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM, _ := os.ReadFile(filepath.Join(out, "pki", "image-signing.pub"))
	pub, err := slot.ParsePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := slot.Verify(bundle.Manifest, bundle.Signature, pub); err != nil {
		t.Errorf("the slot's manifest: %v", err)
	}
	uki := bundle.Files[slot.FileUKI]
	if !bytes.HasPrefix(uki, []byte("MZ")) {
		t.Errorf("the slot's UKI is not an EFI binary")
	}
	if c, err := image.UKISectionData(uki, ".cmdline"); err != nil || !strings.Contains(string(c), "console=ttyS0") || !strings.Contains(string(c), layout.SlotArg+"="+man.ID) {
		t.Errorf("command line %q: %v", c, err)
	}
	if k, err := image.UKISectionData(uki, ".linux"); err != nil || !bytes.Contains(k[:4096], []byte("HdrS")) {
		t.Errorf("the .linux section is not a bzImage: %v", err)
	}
	initrdZ, err := image.UKISectionData(uki, ".initrd")
	if err != nil {
		t.Fatal(err)
	}
	rendered, _ := os.ReadFile(filepath.Join(out, "ignition", "etcd-1.ign"))
	if !bytes.Equal(bundle.Files[slot.FileConfig], rendered) {
		t.Errorf("the slot's config is not the rendered one")
	}

	// The node binary is on the ESP, byte for byte the one built; the
	// initramfs holds the small /init, the links into the ESP and the
	// modules, and no shell.
	node, err := os.ReadFile(filepath.Join(filepath.Dir(bin.etcdimg), "etcdnode"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bundle.Files[slot.FileNode], node) {
		t.Errorf("the slot's %s is not the node binary", slot.FileNode)
	}
	zr, _ := zstd.NewReader(nil)
	initrd, err := zr.DecodeAll(initrdZ, nil)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(initrd)))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, r := range recs {
		names[r.Name] = true
		if r.MTime != 0 || r.UID != 0 {
			t.Errorf("%s: mtime %d uid %d", r.Name, r.MTime, r.UID)
		}
	}
	for _, want := range []string{"init", "usr/bin/etcd", "usr/bin/etcdctl", "lib/modules/virtio_net.ko", "lib/modules/load-order", "dev/console"} {
		if !names[want] {
			t.Errorf("initramfs lacks %s", want)
		}
	}
	for n := range names {
		if strings.HasSuffix(n, "/sh") || strings.Contains(n, "ssh") || strings.Contains(n, "busybox") || n == "etc/passwd" {
			t.Errorf("initramfs holds %s", n)
		}
	}

	// No byte of the CA key, in the image or the unpacked initramfs; the
	// check does find the member's own key, which the config carries.
	caKey, _ := os.ReadFile(filepath.Join(out, "pki", "etcd-ca-key.pem"))
	if pki.ContainsKey(raw, caKey) || pki.ContainsKey(initrd, caKey) {
		t.Errorf("the image holds the CA private key")
	}
	signingKey, _ := os.ReadFile(filepath.Join(out, "pki", "image-signing.key"))
	if pki.ContainsKey(raw, signingKey) || pki.ContainsKey(initrd, signingKey) {
		t.Errorf("the image holds the image-signing private key")
	}
	// The config on the ESP, its files decoded (Butane may gzip them): no
	// CA key, and the member's own key is found, so the check can see keys.
	cfg, err := ign.Parse(bundle.Files[slot.FileConfig])
	if err != nil {
		t.Fatal(err)
	}
	var decoded []byte
	for _, f := range cfg.Storage.Files {
		b, err := ign.Contents(f)
		if err != nil {
			t.Fatal(err)
		}
		decoded = append(decoded, b...)
	}
	memberKey, _ := os.ReadFile(filepath.Join(out, "pki", "etcd-1-key.pem"))
	if pki.ContainsKey(decoded, caKey) {
		t.Errorf("the image's config holds the CA private key")
	}
	if !pki.ContainsKey(decoded, memberKey) {
		t.Errorf("the key check cannot find the member key in its config")
	}

	// Reproducible: a second build of the same directory is byte-identical.
	first := sha(t, img)
	if _, stderr, code := etcdimg(t, work, "build", "--out", out); code != 0 {
		t.Fatalf("rebuild: %s", stderr)
	}
	if second := sha(t, img); second != first {
		t.Errorf("rebuild changed the image: %s → %s", first, second)
	}
}

// TestBuildRefusesBadPackages: a package that is not what it should be
// is refused in one line, and the output directory is not created.
func TestBuildRefusesBadPackages(t *testing.T) {
	work := t.TempDir()
	junk := filepath.Join(work, "junk.deb")
	os.WriteFile(junk, []byte("not a package"), 0o644)
	boot, _ := deb.Find(deb.CacheDir(), deb.Bootloader)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"kernel not a .deb", []string{"--kernel-package", junk}, "not a Debian package"},
		{"kernel package without a kernel", []string{"--kernel-package", boot}, "holds no boot/vmlinuz"},
		{"missing boot loader", []string{"--bootloader-package", filepath.Join(work, "nope.deb")}, "--bootloader-package"},
		{"missing node binary", []string{"--node-binary", filepath.Join(work, "nope")}, "--node-binary"},
		{"missing init binary", []string{"--init-binary", filepath.Join(work, "nope")}, "--init-binary"},
		{"dynamically linked node binary", []string{"--node-binary", "/bin/true"}, "is dynamically linked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(work, "out-"+strings.ReplaceAll(tc.name, " ", "-"))
			_, stderr, code := etcdimg(t, work, append([]string{"build", "--nodes", "1", "--out", out}, tc.args...)...)
			if code != 1 || !strings.Contains(stderr, tc.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("exit %d, stderr %q; want one line with %q", code, stderr, tc.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("a refused build created %s", out)
			}
		})
	}
}

// TestBuildBootsHealthyMember boots a one-member image under UEFI
// (OVMF, systemd-boot) in TCG, talks mTLS to it from the host, powers it
// off with ACPI, checks the data disk, and boots the same disks again.
func TestBuildBootsHealthyMember(t *testing.T) {
	work := t.TempDir()
	out := buildOne(t, work)
	img := filepath.Join(out, "images", "etcd-1.img")
	data := filepath.Join(work, "etcd-1-data.img")
	pkiDir := filepath.Join(out, "pki")
	admin := tlsConfig(t, filepath.Join(pkiDir, "etcd-ca.pem"), filepath.Join(pkiDir, "admin.pem"), filepath.Join(pkiDir, "admin-key.pem"))

	m := bootVM(t, filepath.Join(work, "vm"), img, data, "")
	if err := m.vm.WaitConsole(consoleReady, bootTimeout); err != nil {
		t.Fatal(err)
	}
	console, _ := os.ReadFile(m.vm.Console)
	if !strings.Contains(string(console), "blank, formatted ext4") {
		t.Errorf("first boot did not format the blank data disk")
	}

	// /health on the plain-HTTP metrics port.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/health", m.metrics))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `{"health":"true"`) {
		t.Errorf("/health: %s", body)
	}

	// The admin certificate writes and reads over mTLS.
	endpoint := fmt.Sprintf("https://127.0.0.1:%d", m.client)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, TLS: admin, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/etcdimg/appliance", "survives"); err != nil {
		t.Fatalf("put: %v", err)
	}
	got, err := cli.Get(ctx, "/etcdimg/appliance")
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "survives" {
		t.Fatalf("get: %v %v", got, err)
	}

	// A client without a certificate is refused.
	noCert := tlsConfig(t, filepath.Join(pkiDir, "etcd-ca.pem"), "", "")
	c := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: noCert}}
	if _, err := c.Get(endpoint + "/version"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client without a certificate: %v", err)
	}
	withCert := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: admin}}
	if r, err := withCert.Get(endpoint + "/version"); err != nil {
		t.Errorf("admin /version: %v", err)
	} else {
		r.Body.Close()
	}
	cli.Close()

	// ACPI power-off: etcd stops, the disk is unmounted, QEMU exits.
	if err := m.vm.Shutdown(time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := m.vm.WaitConsole("unmounted "+layout.DataMount, time.Second); err != nil {
		t.Error(err)
	}
	if out, err := exec.Command("e2fsck", "-fn", data).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn after power-off: %v\n%s", err, out)
	}

	// The same disks boot again, keep the key, and are not reformatted.
	// This time the config also comes through fw_cfg, which wins over the
	// copy on the ESP.
	m2 := bootVM(t, filepath.Join(work, "vm2"), img, data, filepath.Join(out, "ignition", "etcd-1.ign"))
	if err := m2.vm.WaitConsole(consoleReady, bootTimeout); err != nil {
		t.Fatal(err)
	}
	console, _ = os.ReadFile(m2.vm.Console)
	if !strings.Contains(string(console), "read config: fw_cfg opt/com.coreos/config") {
		t.Errorf("second boot did not take its config from fw_cfg")
	}
	if !strings.Contains(string(m2.vm.CommandLine()), "-fw_cfg") {
		t.Errorf("QEMU was not given the config")
	}
	if !strings.Contains(string(console), "existing ext4") || strings.Contains(string(console), "formatted ext4") {
		t.Errorf("second boot did not reuse the data disk")
	}
	cli2, err := clientv3.New(clientv3.Config{Endpoints: []string{fmt.Sprintf("https://127.0.0.1:%d", m2.client)}, TLS: admin, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli2.Close()
	got, err = cli2.Get(ctx, "/etcdimg/appliance")
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "survives" {
		t.Errorf("after reboot: %v %v", got, err)
	}

	// Ctrl-Alt-Del is a clean power-off, not a reboot without sync:
	// etcd stops, the data disk is unmounted, and (with -no-reboot) QEMU
	// exits.
	if err := m2.vm.CtrlAltDel(); err != nil {
		t.Fatal(err)
	}
	if err := m2.vm.Wait(time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := m2.vm.WaitConsole("unmounted "+layout.DataMount, time.Second); err != nil {
		t.Errorf("ctrl-alt-del: %v", err)
	}
	if err := m2.vm.WaitConsole("powering off (signal interrupt)", time.Second); err != nil {
		t.Errorf("ctrl-alt-del: %v", err)
	}
	if out, err := exec.Command("e2fsck", "-fn", data).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn after ctrl-alt-del: %v\n%s", err, out)
	}
}

// TestRefusedBootLeavesTheDataDiskAlone: a config the appliance cannot
// apply, or a data disk that holds something other than ext4, stops the
// boot with a clear console message, and the data disk's bytes do not
// change.
func TestRefusedBootLeavesTheDataDiskAlone(t *testing.T) {
	work := t.TempDir()
	out := buildOne(t, work)
	img := filepath.Join(out, "images", "etcd-1.img")
	rendered, _ := os.ReadFile(filepath.Join(out, "ignition", "etcd-1.ign"))

	ext4Disk := func(t *testing.T, path string) {
		if b, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "precious", path, "64M").CombinedOutput(); err != nil {
			t.Fatalf("mkfs.ext4: %v %s", err, b)
		}
	}
	fatDisk := func(t *testing.T, path string) {
		f, _ := os.Create(path)
		f.Truncate(64 << 20)
		f.Close()
		if b, err := exec.Command("mkfs.vfat", path).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.vfat: %v %s", err, b)
		}
	}
	for _, tc := range []struct {
		name   string
		config []byte
		disk   func(*testing.T, string)
		want   string
	}{
		{"invalid Ignition", []byte(`{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"etc/relative"}]}}`), ext4Disk, "invalid config"},
		{"unsupported unit directive", bytes.Replace(rendered, []byte(`LimitNOFILE=65536`), []byte(`User=etcd`), 1), ext4Disk, "[Service] User= is not supported"},
		{"data disk that is not ext4", nil, fatDisk, "it holds FAT at its start; not formatting it"},
		{"ext4 data disk of someone else", nil, ext4Disk, `labelled "precious", not "etcd-data"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vmCase(t) // the image is attached read-only
			dir := t.TempDir()
			data := filepath.Join(dir, "data.img")
			tc.disk(t, data)
			before := sha(t, data)
			cfg := ""
			if tc.config != nil {
				if bytes.Equal(tc.config, rendered) {
					t.Fatal("the broken config is the rendered one")
				}
				cfg = filepath.Join(dir, "broken.ign")
				os.WriteFile(cfg, tc.config, 0o600)
			}
			m := bootVM(t, filepath.Join(dir, "vm"), img, data, cfg)
			if err := m.vm.WaitConsole(consoleStopped, bootTimeout); err != nil {
				t.Fatal(err)
			}
			if err := m.vm.WaitConsole(tc.want, 5*time.Second); err != nil {
				t.Error(err)
			}
			// A stopped boot still powers off cleanly.
			if err := m.vm.Shutdown(time.Minute); err != nil {
				t.Error(err)
			}
			if after := sha(t, data); after != before {
				t.Errorf("the data disk changed: %s → %s", before, after)
			}
		})
	}
}
