package e2e

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdimg/testvm/chaos"
	"etcdimg/testvm/local"
)

// BenchmarkOneMember measures, for a one-member cluster under TCG: the
// warm build time (Go binaries built, packages downloaded, PKI present),
// the image's size (apparent, allocated, compressed), the boot floors of
// this machine (floor_test.go), and the seconds from QEMU's start to etcd
// answering /health on the forwarded metrics port: five first boots
// (blank data disk, blank NVRAM) and five second boots (the disk and
// NVRAM of a first boot), with where the best first boot's time went, and
// the smallest guest RAM, in 32 MiB steps, that boots to healthy.
// Run it with `make bench`.
func BenchmarkOneMember(b *testing.B) {
	work := b.TempDir()
	spec := filepath.Join(work, "one.yaml")
	os.WriteFile(spec, []byte(oneMemberSpec), 0o644)
	out := filepath.Join(work, "out")
	run := func() time.Duration {
		start := time.Now()
		if _, stderr, code := etcdimg(b, work, "build", "--config", spec, "--out", out); code != 0 {
			b.Fatalf("build: %s", stderr)
		}
		return time.Since(start)
	}
	run() // cold: creates the PKI
	var build time.Duration
	for range b.N {
		build += run()
	}
	build /= time.Duration(b.N)
	img := filepath.Join(out, "images", "etcd-1.img")
	st, err := os.Stat(img)
	if err != nil {
		b.Fatal(err)
	}
	alloc := st.Sys().(*syscall.Stat_t).Blocks * 512
	gz, zs := compressedSizes(b, img)
	initrd := initramfsOf(b, img)

	floors := measureFloors(b, filepath.Join(work, "floor"), 7)
	unpack := initramfsCost(b, filepath.Join(work, "floor"), initrd, 3)

	var first, again []time.Duration
	var profiles [][]bootStep
	for i := range 5 {
		dir := filepath.Join(work, fmt.Sprintf("boot%d", i))
		data := filepath.Join(dir, "data.img")
		d, profile := bootToHealthy(b, dir, img, data, guestMemoryMB)
		first, profiles = append(first, d), append(profiles, profile)
		d, _ = bootToHealthy(b, dir, img, data, guestMemoryMB)
		again = append(again, d)
	}
	smallest := 0
	for mem := 128; mem <= guestMemoryMB && smallest == 0; mem += 32 {
		dir := filepath.Join(work, fmt.Sprintf("mem%d", mem))
		if _, p := tryBootToHealthy(b, dir, img, filepath.Join(dir, "data.img"), mem, time.Minute); p != nil {
			smallest = mem
		}
	}

	b.ReportMetric(build.Seconds(), "build-s")
	b.ReportMetric(mib(st.Size()), "image-MiB")
	b.ReportMetric(mib(alloc), "allocated-MiB")
	b.ReportMetric(mib(gz), "gzip-MiB")
	b.ReportMetric(mib(zs), "zstd-MiB")
	b.ReportMetric(best(first).Seconds(), "boot-to-healthy-s")
	b.ReportMetric(best(again).Seconds(), "reboot-to-healthy-s")
	bi := slices.Index(first, best(first))
	fa, fb := best(floors.direct), best(floors.efi)
	fmt.Printf("\none member, TCG, 1 vCPU, %d MiB guest RAM\n", guestMemoryMB)
	fmt.Printf("  build (warm):            %.2f s\n", build.Seconds())
	fmt.Printf("  image:                   %.1f MiB apparent, %.1f MiB allocated, %.1f MiB gzip, %.1f MiB zstd\n", mib(st.Size()), mib(alloc), mib(gz), mib(zs))
	fmt.Printf("  initramfs:               %.1f MiB zstd (%.1f MiB unpacked); loading and unpacking it costs %s (floor (a) with it, less without)\n",
		mib(int64(len(initrd))), mib(unpackedSize(b, initrd)), unpack.Round(10*time.Millisecond))
	fmt.Printf("  floors, QEMU start → /init of a trivial initramfs, same kernel and machine (best/median of %d):\n", len(floors.direct))
	fmt.Printf("    (a) QEMU loads the kernel:                 %s / %s\n", fa.Round(10*time.Millisecond), median(floors.direct).Round(10*time.Millisecond))
	fmt.Printf("    (b) OVMF boots the UKI:                    %s / %s\n", fb.Round(10*time.Millisecond), median(floors.efi).Round(10*time.Millisecond))
	fmt.Printf("    (b) with the UKI as the loader instead of systemd-boot: %s / %s: systemd-boot costs %s (best), %s (median)\n",
		best(floors.uki).Round(10*time.Millisecond), median(floors.uki).Round(10*time.Millisecond),
		(fb - best(floors.uki)).Round(10*time.Millisecond), (median(floors.efi) - median(floors.uki)).Round(10*time.Millisecond))
	b.ReportMetric((fb - best(floors.uki)).Seconds(), "systemd-boot-s")
	fmt.Printf("  QEMU start → healthy (best / median of %d):\n", len(first))
	fmt.Printf("    first boot (blank data disk):              %s / %s = %.2f × floor (b), %.2f × floor (a)   (target ≤ 1.2 × (b))\n",
		best(first).Round(10*time.Millisecond), median(first).Round(10*time.Millisecond), best(first).Seconds()/fb.Seconds(), best(first).Seconds()/fa.Seconds())
	fmt.Printf("    second boot (formatted data disk):         %s / %s = floor (b) + %.2f s   (target ≤ + 2 s)\n",
		best(again).Round(10*time.Millisecond), median(again).Round(10*time.Millisecond), (best(again) - fb).Seconds())
	ram := func(mem int) string {
		if mem == 0 {
			return fmt.Sprintf("none from 128 to %d MiB", guestMemoryMB)
		}
		return fmt.Sprintf("%d MiB", mem)
	}
	fmt.Printf("  smallest guest RAM that boots to healthy:    %s; floor (b) reaches its /init with %s (32 MiB steps from 128)\n", ram(smallest), ram(floors.smallestRAM))
	fmt.Printf("  first boots: %v\n  second boots: %v\n", round(first), round(again))
	fmt.Printf("  where the best first boot's time went (console stamps):\n")
	printProfile(profiles[bi])
}

// bootToHealthy boots img with data until etcd reports healthy, and
// powers it off: QEMU's start to healthy, and the boot's profile.
func bootToHealthy(b *testing.B, dir, img, data string, memoryMB int) (time.Duration, []bootStep) {
	d, p := tryBootToHealthy(b, dir, img, data, memoryMB, bootTimeout)
	if p == nil {
		b.Fatalf("%s: not healthy within %s", dir, bootTimeout)
	}
	return d, p
}

// tryBootToHealthy is bootToHealthy that reports a boot that never gets
// healthy (nil profile) instead of failing.
func tryBootToHealthy(b *testing.B, dir, img, data string, memoryMB int, timeout time.Duration) (time.Duration, []bootStep) {
	start := time.Now()
	m := bootVMWithMemory(b, dir, img, data, "", memoryMB)
	defer m.vm.Kill()
	url := fmt.Sprintf("http://127.0.0.1:%d/health", m.metrics)
	c := http.Client{Timeout: time.Second}
	for {
		if resp, err := c.Get(url); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), `"health":"true"`) {
				break
			}
		}
		if time.Since(start) > timeout || m.vm.Exited() {
			fmt.Printf("  %d MiB: not healthy within %s; console tail:\n%s\n", memoryMB, timeout, m.vm.Tail(15))
			return 0, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(start)
	// firstboot stamps "ready" a moment after etcd answers; the profile
	// needs that line.
	if err := m.vm.WaitConsole("etcd.service: ready", 30*time.Second); err != nil {
		b.Fatal(err)
	}
	m.vm.Shutdown(time.Minute)
	p, err := bootProfile(m.vm.Console, took)
	if err != nil {
		b.Fatal(err)
	}
	return took, p
}

func round(d []time.Duration) []time.Duration {
	out := make([]time.Duration, len(d))
	for i, x := range d {
		out[i] = x.Round(10 * time.Millisecond)
	}
	return out
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func compressedSizes(b *testing.B, path string) (gz, zs int64) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var cg, cz countWriter
	gw, _ := gzip.NewWriterLevel(&cg, gzip.BestCompression)
	zw, _ := zstd.NewWriter(&cz, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	io.Copy(io.MultiWriter(gw, zw), f)
	gw.Close()
	zw.Close()
	return int64(cg), int64(cz)
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

// BenchmarkThreeMemberUp measures `etcdimg up` from start to a healthy
// three-member cluster under TCG, three times from blank data disks (and
// blank NVRAM), with the CPU-seconds the three QEMUs used until healthy
// (user and system time from /proc, read before `down`), and each
// member's memory: guest RAM, etcd's resident memory inside the guest
// (from its own metrics), and QEMU's resident memory on the host.
func BenchmarkThreeMemberUp(b *testing.B) {
	work := b.TempDir()
	out := filepath.Join(work, "out")
	if _, stderr, code := etcdimg(b, work, "build", "--nodes", "3", "--out", out); code != 0 {
		b.Fatalf("build: %s", stderr)
	}
	var ups []time.Duration
	var cpus []float64
	for range 3 {
		os.RemoveAll(filepath.Join(out, "disks")) // each run starts from blank data disks
		os.RemoveAll(filepath.Join(out, "run"))   // and blank NVRAM
		start := time.Now()
		_, stderr, code := etcdimg(b, work, "up", "--out", out, "--detach", "--accel", "tcg", "--timeout", "4m", "--port-base", fmt.Sprint(freePortBase(b, 3)))
		took := time.Since(start)
		if code != 0 {
			etcdimg(b, work, "down", "--out", out)
			b.Fatalf("up: %s", stderr)
		}
		ups = append(ups, took)
		st, err := local.LoadState(filepath.Join(out, "run"))
		if err != nil {
			b.Fatal(err)
		}
		var cpu float64
		for _, m := range st.Members {
			cpu += cpuSeconds(m.QEMU.PID)
		}
		cpus = append(cpus, cpu)
		if len(ups) == 1 {
			fmt.Printf("\nthree members, TCG, 1 vCPU and %d MiB guest RAM each\n", st.MemoryMB)
			for _, m := range st.Members {
				fmt.Printf("  %s: etcd RSS in guest %.1f MiB, QEMU RSS on host %.1f MiB\n", m.Name, etcdRSS(b, m.Metrics), qemuRSS(m.QEMU.PID))
			}
		}
		etcdimg(b, work, "down", "--out", out)
	}
	b.ReportMetric(best(ups).Seconds(), "up-to-healthy-s")
	fmt.Printf("  etcdimg up → healthy cluster (best / median of %d): %s / %s   (target ≤ 15 s)\n", len(ups), best(ups).Round(10*time.Millisecond), median(ups).Round(10*time.Millisecond))
	fmt.Printf("  runs: %v; CPU-seconds of the three QEMUs until healthy: %.1f\n", round(ups), cpus)
}

// cpuSeconds is the user and system time process pid has used.
func cpuSeconds(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	var utime, stime float64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	return (utime + stime) / 100 // clock ticks; USER_HZ is 100 on Linux
}

func etcdRSS(b *testing.B, port int) float64 {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "process_resident_memory_bytes "); ok {
			var f float64
			fmt.Sscanf(v, "%g", &f)
			return f / (1 << 20)
		}
	}
	return 0
}

func qemuRSS(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(v), "%g", &kb)
			return kb / 1024
		}
	}
	return 0
}

// BenchmarkReplaceAndRoll times the lifecycle on a three-member cluster
// under TCG: `replace etcd-2` with a blank data disk until it is a voter
// again and caught up, then `roll` of all three members. Each is the
// wall time of the command, which waits for the rejoin itself.
func BenchmarkReplaceAndRoll(b *testing.B) {
	u := upThree(b)
	start := time.Now()
	if out, stderr, code := etcdimg(b, u.work, "replace", "etcd-2", "--out", u.out); code != 0 {
		b.Fatalf("replace: %s%s", out, stderr)
	} else {
		fmt.Printf("\nreplace etcd-2 (blank data disk):\n%s", out)
	}
	replace := time.Since(start)
	start = time.Now()
	if out, stderr, code := etcdimg(b, u.work, "roll", "--out", u.out); code != 0 {
		b.Fatalf("roll: %s%s", out, stderr)
	} else {
		fmt.Printf("\nroll (blank data disks):\n%s", out)
	}
	roll := time.Since(start)
	b.ReportMetric(replace.Seconds(), "replace-s")
	b.ReportMetric(roll.Seconds(), "roll-s")
	fmt.Printf("  replace of one member → voter again: %.1fs (target 30 s)\n  roll of three members: %.1fs (target 90 s)\n", replace.Seconds(), roll.Seconds())
}

// BenchmarkUpgrade times `etcdimg upgrade` of a three-member cluster
// under TCG to images of a changed spec (upgrade.goodAfter 5s), from the
// command's own lines: per member, the slot's transfer into the inactive
// slot and the reboot until the member marked the slot good; and the
// whole command, builds included.
func BenchmarkUpgrade(b *testing.B) {
	u := upThree(b)
	raw := mustRead(b, filepath.Join(u.out, "etcdimg.yaml"))
	raw = strings.Replace(raw, "goodAfter: 30s", "goodAfter: 5s", 1)
	cfg := filepath.Join(u.work, "upgrade.yaml")
	os.WriteFile(cfg, []byte(raw), 0o644)
	start := time.Now()
	out, stderr, code := etcdimg(b, u.work, "upgrade", "--config", cfg, "--out", u.out)
	total := time.Since(start)
	if code != 0 {
		b.Fatalf("upgrade: %s%s", out, stderr)
	}
	fmt.Printf("\nupgrade (3 members):\n%s", out)
	var stage, good []float64
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		var secs float64
		if _, err := fmt.Sscanf(strings.TrimSuffix(f[len(f)-1], "s"), "%g", &secs); err != nil {
			continue
		}
		switch {
		case strings.Contains(line, " staged ("):
			stage = append(stage, secs)
		case strings.Contains(line, "and marked it good"):
			good = append(good, secs)
		}
	}
	if len(stage) != 3 || len(good) != 3 {
		b.Fatalf("upgrade said %d staged and %d marked-good lines, want 3 each:\n%s", len(stage), len(good), out)
	}
	for i := range stage {
		b.ReportMetric(stage[i], fmt.Sprintf("stage%d-s", i+1))
		b.ReportMetric(good[i], fmt.Sprintf("reboot-to-good%d-s", i+1))
	}
	b.ReportMetric(total.Seconds(), "upgrade-total-s")
	fmt.Printf("  per member: staged in %v s, rebooted and marked good in %v s (goodAfter 5 s)\n  upgrade of three members, builds included: %.1fs\n", stage, good, total.Seconds())
}

// BenchmarkSnapshotAndRestore times, on a three-member cluster under TCG
// holding 100,000 keys (100-byte values): `snapshot save` (from the
// healthiest member, verified) and its size; then `restore` of that
// snapshot plus `up` until the restored cluster is healthy, from blank
// data disks (target 30 s on this machine).
func BenchmarkSnapshotAndRestore(b *testing.B) {
	u := upThree(b)
	cli := u.client(b, 0, u.admin)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	value := strings.Repeat("v", 100)
	for i := 0; i < 100000; i += 100 {
		var ops []clientv3.Op
		for j := i; j < i+100; j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/bench/%06d", j), value))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
	}
	snap := filepath.Join(u.work, "bench.db")
	start := time.Now()
	if out, stderr, code := etcdimg(b, u.work, "snapshot", "save", snap, "--out", u.out); code != 0 {
		b.Fatalf("snapshot save: %s%s", out, stderr)
	}
	save := time.Since(start)
	st, _ := os.Stat(snap)
	if _, stderr, code := etcdimg(b, u.work, "down", "--out", u.out); code != 0 {
		b.Fatalf("down: %s", stderr)
	}
	start = time.Now()
	if out, stderr, code := etcdimg(b, u.work, "restore", "--snapshot", snap, "--out", u.out); code != 0 {
		b.Fatalf("restore: %s%s", out, stderr)
	}
	restoreCmd := time.Since(start)
	_, stderr, code := etcdimg(b, u.work, "up", "--out", u.out, "--detach", "--accel", "tcg", "--timeout", "4m", "--port-base", fmt.Sprint(freePortBase(b, 3)))
	if code != 0 {
		b.Fatalf("up: %s", stderr)
	}
	restored := time.Since(start)
	u.reload(b)
	for _, m := range u.state.Members {
		c, _ := os.ReadFile(m.Console)
		fmt.Printf("  %s:\n", m.Name)
		for _, line := range strings.Split(string(c), "\n") {
			if strings.Contains(line, "firstboot: ") && (strings.Contains(line, "appliance starting") || strings.Contains(line, "prepare data disk") || strings.Contains(line, "decide cluster state") || strings.Contains(line, "etcd.service: ready")) {
				fmt.Printf("    %.200s\n", line)
			}
		}
	}
	b.ReportMetric(save.Seconds(), "snapshot-save-s")
	b.ReportMetric(float64(st.Size())/(1<<20), "snapshot-MiB")
	b.ReportMetric(restored.Seconds(), "restore-to-healthy-s")
	fmt.Printf("\n100,000 keys, 100-byte values, three members, TCG\n  snapshot save: %.1fs, %.1f MiB\n  restore (verify, set aside, build images): %.1fs; restore + up → healthy: %.1fs (target 30 s)\n",
		save.Seconds(), float64(st.Size())/(1<<20), restoreCmd.Seconds(), restored.Seconds())
}

// BenchmarkCloudImages measures a warm `build --platform aws` in every
// format (time, and each file's apparent and allocated size), then boots
// the raw image as an AWS instance (DHCP, IMDSv2 user-data, the Time
// Sync Service; in a network namespace with the simulated metadata
// service, as the e2e test does) and times the run to a member that
// takes a write over mTLS.
func BenchmarkCloudImages(b *testing.B) {
	work := b.TempDir()
	spec := filepath.Join(work, "one.yaml")
	os.WriteFile(spec, []byte(oneMemberSpec), 0o644)
	out := filepath.Join(work, "out")
	build := func() time.Duration {
		start := time.Now()
		if _, stderr, code := etcdimg(b, work, "build", "--config", spec, "--out", out, "--platform", "aws", "--format", "raw,qcow2,vhd,gce,vmdk"); code != 0 {
			b.Fatalf("build: %s", stderr)
		}
		return time.Since(start)
	}
	build()
	took := build()
	b.ReportMetric(took.Seconds(), "build-all-formats-s")
	fmt.Printf("\ncloud images (aws), every format, warm build: %.2f s\n", took.Seconds())
	for _, ext := range []string{".raw", ".qcow2", ".vhd", ".tar.gz", ".vmdk"} {
		st, err := os.Stat(filepath.Join(out, "images", "etcdimg-aws"+ext))
		if err != nil {
			b.Fatal(err)
		}
		alloc := st.Sys().(*syscall.Stat_t).Blocks * 512
		fmt.Printf("  %-8s %5.1f MiB apparent, %5.1f MiB allocated\n", ext, mib(st.Size()), mib(alloc))
		b.ReportMetric(mib(alloc), strings.TrimPrefix(ext, ".")+"-allocated-MiB")
	}
	pki := filepath.Join(out, "pki")
	c := cloudCase{
		Name: "bench-aws", Platform: "aws", Image: filepath.Join(out, "images", "etcdimg-aws.raw"), Format: "raw",
		UserData: filepath.Join(out, "ignition", "etcd-1.ign"), DHCPStart: "192.168.2.51",
		CA: filepath.Join(pki, "etcd-ca.pem"), Cert: filepath.Join(pki, "admin.pem"), Key: filepath.Join(pki, "admin-key.pem"),
		Want: consoleReady, WantHealth: true, Dir: filepath.Join(work, "aws"),
	}
	c.Data = filepath.Join(c.Dir, "data.img")
	start := time.Now()
	runCloudCase(b, c)
	boot := time.Since(start)
	b.ReportMetric(boot.Seconds(), "aws-boot-to-write-s")
	fmt.Printf("  AWS instance: QEMU start → a write over mTLS: %.1f s (TCG, 1 vCPU, 256 MiB)\n", boot.Seconds())
}

// BenchmarkChaos measures, from one `etcdimg chaos` run on a three-member
// cluster under TCG (2 minutes of traffic from 8 clients, seed 1): the
// seconds from a kill -9 of the leader to the next write acknowledged by
// the cluster, and from the lifting of a partition that isolated one
// member to the moment every member has applied what the cluster had
// committed when it was lifted. Three of each; best and median.
func BenchmarkChaos(b *testing.B) {
	u := upThree(b)
	faults := "kill:leader,kill:leader,kill:leader,partition:isolate,partition:isolate,partition:isolate"
	stdout, stderr, code := etcdimg(b, u.work, "chaos", "--out", u.out, "--duration", "2m", "--faults", faults, "--seed", "1")
	if code != 0 {
		b.Fatalf("chaos: exit %d: %s%s", code, stdout, stderr)
	}
	runs, _ := filepath.Glob(filepath.Join(u.out, "chaos", "*", "faults.json"))
	if len(runs) != 1 {
		b.Fatalf("chaos runs: %v", runs)
	}
	raw, err := os.ReadFile(runs[0])
	if err != nil {
		b.Fatal(err)
	}
	var done []chaos.Done
	if err := json.Unmarshal(raw, &done); err != nil {
		b.Fatal(err)
	}
	var kill, heal []time.Duration
	for _, d := range done {
		switch d.Kind {
		case chaos.Kill:
			kill = append(kill, d.RecoveredAfter)
		case chaos.Partition:
			heal = append(heal, d.CaughtUpAfter)
		}
	}
	if len(kill) != 3 || len(heal) != 3 || slices.Min(kill) < 0 || slices.Min(heal) < 0 {
		b.Fatalf("faults measured: kill → write %v, heal → caught up %v", kill, heal)
	}
	slices.Sort(kill)
	slices.Sort(heal)
	b.ReportMetric(kill[1].Seconds(), "kill-to-write-s")
	b.ReportMetric(heal[1].Seconds(), "heal-to-caught-up-s")
	// upgrade as a chaos fault: every member onto images of a changed
	// spec, and one member sent another cluster's image, which it must
	// refuse; the checks pass.
	start := time.Now()
	up, stderr, code := etcdimg(b, u.work, "chaos", "--out", u.out, "--duration", "50s", "--faults", "upgrade:good,upgrade:foreign", "--seed", "3")
	if code != 0 {
		b.Fatalf("chaos upgrade: exit %d: %s%s", code, up, stderr)
	}
	for _, want := range []string{"verdict: PASS", "refused another cluster's image", "marked it good"} {
		if !strings.Contains(up, want) {
			b.Fatalf("the chaos upgrade report lacks %q:\n%s", want, up)
		}
	}
	fmt.Printf("\nchaos upgrade:good,upgrade:foreign: PASS in %.1fs\n", time.Since(start).Seconds())
	fmt.Printf("\n%s  leader kill → next acknowledged write: best %.2fs, median %.2fs (%v)\n  partition lifted → every member caught up: best %.2fs, median %.2fs (%v)\n",
		stdout, kill[0].Seconds(), kill[1].Seconds(), kill, heal[0].Seconds(), heal[1].Seconds(), heal)
}

// BenchmarkDefragmentation is docs/maintenance.md's figures under TCG:
// 50,000 keys written (in transactions of 100) then deleted, and an
// independent client's write latency (p50, p99) for 30 s without a
// defragmentation, then while `etcdimg defrag --compact` defragments the
// three members one at a time, leader last; each member's database file
// before and after.
func BenchmarkDefragmentation(b *testing.B) {
	u := upThree(b)
	cli := u.client(b, 0, u.admin)
	ctx := context.Background()
	start := time.Now()
	for i := 0; i < 50_000; i += 100 {
		var ops []clientv3.Op
		for j := i; j < i+100; j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/churn/%06d", j), fmt.Sprintf("value-%06d-%s", j, strings.Repeat("x", 64))))
		}
		tctx, cancel := context.WithTimeout(ctx, time.Minute)
		_, err := cli.Txn(tctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			b.Fatalf("put /churn/%06d…: %v", i, err)
		}
	}
	fill := time.Since(start)
	if _, err := cli.Delete(ctx, "/churn/", clientv3.WithPrefix()); err != nil {
		b.Fatal(err)
	}
	before := dbStatus(b, u)
	idle := latencies(b, u, func() { time.Sleep(30 * time.Second) })
	var took time.Duration
	busy := latencies(b, u, func() {
		s := time.Now()
		out, stderr, code := etcdimg(b, u.work, "defrag", "--compact", "--out", u.out)
		if code != 0 {
			b.Fatalf("defrag: exit %d: %s%s", code, out, stderr)
		}
		took = time.Since(s)
		fmt.Printf("\netcdimg defrag --compact:\n%s", out)
	})
	after := dbStatus(b, u)
	for i, m := range u.state.Members {
		fmt.Printf("  %s: database %.1f → %.1f MiB (%.1f MiB in use)\n", m.Name, mib(before[i].DbSize), mib(after[i].DbSize), mib(after[i].DbSizeInUse))
		if after[i].DbSize >= before[i].DbSize {
			b.Errorf("%s's database did not shrink: %d → %d bytes", m.Name, before[i].DbSize, after[i].DbSize)
		}
	}
	p := func(d []time.Duration, q float64) float64 {
		if len(d) == 0 {
			return 0
		}
		slices.Sort(d)
		return float64(d[int(q*float64(len(d)-1))].Microseconds()) / 1000
	}
	fmt.Printf("  50,000 keys in %.1fs; writes without a defragmentation: %d, p50 %.1f ms, p99 %.1f ms; during it (%.1fs): %d, p50 %.1f ms, p99 %.1f ms\n",
		fill.Seconds(), len(idle), p(idle, .5), p(idle, .99), took.Seconds(), len(busy), p(busy, .5), p(busy, .99))
	b.ReportMetric(fill.Seconds(), "put-50k-keys-s")
	b.ReportMetric(took.Seconds(), "defrag-3-members-s")
	b.ReportMetric(p(idle, .5), "write-p50-ms")
	b.ReportMetric(p(idle, .99), "write-p99-ms")
	b.ReportMetric(p(busy, .5), "write-during-defrag-p50-ms")
	b.ReportMetric(p(busy, .99), "write-during-defrag-p99-ms")
	b.ReportMetric(mib(before[0].DbSize-after[0].DbSize), "etcd-1-reclaimed-MiB")
}

// latencies are the durations of the writes an independent client makes
// through every endpoint, one after another, while during runs; a write
// that fails counts with its full time (it is what a client waited).
func latencies(b *testing.B, u *upCluster, during func()) []time.Duration {
	var eps []string
	for _, m := range u.state.Members {
		eps = append(eps, fmt.Sprintf("https://127.0.0.1:%d", m.Client))
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, TLS: u.admin, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	stop := make(chan struct{})
	done := make(chan []time.Duration)
	go func() {
		var out []time.Duration
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- out
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s := time.Now()
			cli.Put(ctx, fmt.Sprintf("/latency/%06d", i), "v")
			out = append(out, time.Since(s))
			cancel()
		}
	}()
	during()
	close(stop)
	return <-done
}
