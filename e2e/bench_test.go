package e2e

import (
	"compress/gzip"
	"context"
	"etcdimg/cluster"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// BenchmarkOneMember measures, for a one-member cluster under TCG: the
// warm build time (Go binaries built, packages downloaded, PKI present),
// the image's size (apparent, allocated, compressed), and the seconds from
// QEMU's start to etcd answering /health on the forwarded metrics port.
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

	var boots []time.Duration
	var profiles [][]bootStep
	for i := range 3 {
		dir := filepath.Join(work, fmt.Sprintf("boot%d", i))
		start := time.Now()
		m := bootVM(b, dir, img, filepath.Join(dir, "data.img"), "")
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
			if time.Since(start) > bootTimeout || m.vm.Exited() {
				b.Fatalf("not healthy within %s:\n%s", bootTimeout, m.vm.Tail(40))
			}
			time.Sleep(100 * time.Millisecond)
		}
		boots = append(boots, time.Since(start))
		m.vm.Shutdown(time.Minute)
		p, err := bootProfile(m.vm.Console, boots[len(boots)-1])
		if err != nil {
			b.Fatal(err)
		}
		profiles = append(profiles, p)
	}
	b.ReportMetric(build.Seconds(), "build-s")
	b.ReportMetric(mib(st.Size()), "image-MiB")
	b.ReportMetric(mib(alloc), "allocated-MiB")
	b.ReportMetric(mib(gz), "gzip-MiB")
	b.ReportMetric(mib(zs), "zstd-MiB")
	best, bi := boots[0], 0
	for i, d := range boots {
		if d < best {
			best, bi = d, i
		}
	}
	b.ReportMetric(best.Seconds(), "boot-to-healthy-s")
	fmt.Printf("\none member, TCG, 1 vCPU, 256 MiB guest RAM\n")
	fmt.Printf("  build (warm):            %.2f s\n", build.Seconds())
	fmt.Printf("  image:                   %.1f MiB apparent, %.1f MiB allocated, %.1f MiB gzip, %.1f MiB zstd\n", mib(st.Size()), mib(alloc), mib(gz), mib(zs))
	fmt.Printf("  QEMU start → healthy:    %s (3 boots: %v)\n", best.Round(10*time.Millisecond), boots)
	fmt.Printf("  where the best boot's time went (console stamps):\n")
	printProfile(profiles[bi])
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
// three-member cluster under TCG, and each member's memory: guest RAM,
// etcd's resident memory inside the guest (from its own metrics), and
// QEMU's resident memory on the host.
func BenchmarkThreeMemberUp(b *testing.B) {
	work := b.TempDir()
	out := filepath.Join(work, "out")
	if _, stderr, code := etcdimg(b, work, "build", "--nodes", "3", "--out", out); code != 0 {
		b.Fatalf("build: %s", stderr)
	}
	var ups []time.Duration
	for range 2 {
		os.RemoveAll(filepath.Join(out, "disks")) // each run starts from blank data disks
		start := time.Now()
		_, stderr, code := etcdimg(b, work, "up", "--out", out, "--detach", "--accel", "tcg", "--timeout", "4m", "--port-base", fmt.Sprint(freePortBase(b, 3)))
		took := time.Since(start)
		if code != 0 {
			etcdimg(b, work, "down", "--out", out)
			b.Fatalf("up: %s", stderr)
		}
		ups = append(ups, took)
		st, err := cluster.LoadState(filepath.Join(out, "run"))
		if err != nil {
			b.Fatal(err)
		}
		if len(ups) == 2 {
			fmt.Printf("\nthree members, TCG, 1 vCPU and %d MiB guest RAM each\n", st.MemoryMB)
			for _, m := range st.Members {
				fmt.Printf("  %s: etcd RSS in guest %.1f MiB, QEMU RSS on host %.1f MiB\n", m.Name, etcdRSS(b, m.Metrics), qemuRSS(m.QEMU.PID))
			}
		}
		etcdimg(b, work, "down", "--out", out)
	}
	best := min(ups[0], ups[1])
	b.ReportMetric(best.Seconds(), "up-to-healthy-s")
	fmt.Printf("  etcdimg up → healthy cluster: %s (runs: %v)\n", best.Round(10*time.Millisecond), ups)
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
