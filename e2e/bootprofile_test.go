package e2e

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A boot profile splits one boot, from QEMU's start to a healthy etcd,
// by the stamps the appliance prints on its console: firstboot stamps
// every line with the kernel's uptime, and most steps with their own
// duration. What comes before the kernel (firmware and loader) is what
// is left of the host's measure.
type bootStep struct {
	What    string
	Seconds float64
}

var firstbootLine = regexp.MustCompile(`^\[\s*(\d+\.\d+)\] firstboot: ([^:]+(?::[^:(]+)?)(?::.*?)?(?: \((\d+(?:\.\d+)?)(µs|ms|s)\))?\s*$`)

// bootProfile reads a console log and the host-side time from QEMU's
// start to healthy.
func bootProfile(console string, total time.Duration) ([]bootStep, error) {
	b, err := os.ReadFile(console)
	if err != nil {
		return nil, err
	}
	var steps []bootStep
	var start, ready float64
	for _, line := range strings.Split(strings.ReplaceAll(string(b), "\r", ""), "\n") {
		m := firstbootLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		at, _ := strconv.ParseFloat(m[1], 64)
		switch {
		case strings.HasPrefix(m[2], "etcdimg appliance starting"):
			start = at
		case strings.HasPrefix(m[2], "etcd.service: ready"):
			ready = at
		}
		if m[3] != "" && ready == 0 {
			d, _ := strconv.ParseFloat(m[3], 64)
			switch m[4] {
			case "ms":
				d /= 1e3
			case "µs":
				d /= 1e6
			}
			steps = append(steps, bootStep{strings.TrimSpace(strings.SplitN(m[2], ":", 2)[0]), d})
		}
	}
	if start == 0 || ready == 0 {
		return nil, fmt.Errorf("%s: no 'appliance starting' or 'etcd.service: ready' line", console)
	}
	var stepped float64
	for _, s := range steps {
		stepped += s.Seconds
	}
	out := []bootStep{
		{"firmware + loader (QEMU start → kernel; the rest of the host's measure)", total.Seconds() - ready},
		{"kernel and initramfs unpacking (uptime at PID 1)", start},
	}
	out = append(out, steps...)
	out = append(out,
		bootStep{"between the steps above", ready - start - stepped},
		bootStep{"total, QEMU start → etcd healthy (host)", total.Seconds()})
	return out, nil
}

func printProfile(steps []bootStep) {
	for _, s := range steps {
		fmt.Printf("    %-72s %6.2f s\n", s.What, s.Seconds)
	}
}

// TestBootProfileReadsTheConsoleStamps reads a real member console (the
// lines of one boot, kept here) the way `make bench` does.
func TestBootProfileReadsTheConsoleStamps(t *testing.T) {
	console := filepath.Join(t.TempDir(), "console.log")
	os.WriteFile(console, []byte(`BdsDxe: starting Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x3,0x0)
[   5.230] firstboot: etcdimg appliance starting (pid 1)
[   5.244] firstboot: mount kernel file systems: /proc /sys /dev /run /tmp (8ms)
[   6.146] firstboot: load modules: 28 loaded, skipped: hv_vmbus.ko (no such device) (900ms)
[   6.206] firstboot: power button: watching event1
[   6.358] firstboot: read config: ESP /etcdimg/node.ign, 4494 bytes, Ignition 3.4.0 (145ms)
[   9.336] firstboot: prepare data disk: /dev/vdb: blank, formatted ext4 in 1.58s, mounted on /var/lib/etcdimg (2.696s)
[  18.353] firstboot: decide cluster state: every member of the spec has a blank disk: bootstrapping a new cluster (8.871s)
[  18.431] firstboot: start etcd.service: pid 92: /usr/bin/etcd (77ms)
etcd: {"level":"info","msg":"ready to serve client requests"}
[  22.755] firstboot: etcd.service: ready
[  24.590] firstboot: powering off (ACPI power button)
[  26.286] firstboot: etcd.service: stopped (signal: terminated) (1.6s)
`), 0o644)
	steps, err := bootProfile(console, 27*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := []bootStep{
		{"firmware + loader (QEMU start → kernel; the rest of the host's measure)", 27 - 22.755},
		{"kernel and initramfs unpacking (uptime at PID 1)", 5.230},
		{"mount kernel file systems", 0.008},
		{"load modules", 0.9},
		{"read config", 0.145},
		{"prepare data disk", 2.696},
		{"decide cluster state", 8.871},
		{"start etcd.service", 0.077},
		{"between the steps above", 22.755 - 5.230 - (0.008 + 0.9 + 0.145 + 2.696 + 8.871 + 0.077)},
		{"total, QEMU start → etcd healthy (host)", 27},
	}
	if len(steps) != len(want) {
		t.Fatalf("steps %v, want %v", steps, want)
	}
	for i := range want {
		if steps[i].What != want[i].What || math.Abs(steps[i].Seconds-want[i].Seconds) > 1e-6 {
			t.Errorf("step %d: %+v, want %+v", i, steps[i], want[i])
		}
	}
	if _, err := bootProfile(filepath.Join(t.TempDir(), "none"), time.Second); err == nil {
		t.Error("a missing console was read")
	}
}
