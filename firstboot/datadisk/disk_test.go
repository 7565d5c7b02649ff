package datadisk

import (
	"os"
	"strings"
	"testing"
	"time"
)

// Block devices as the thin layer reports them: whole disks probed for
// a file system and label.
var (
	vda         = blockDev{Name: "vda"}
	vdaESP      = blockDev{Name: "vda1", IsPart: true, Parent: "vda", Partname: "ESP"}
	vdaData     = blockDev{Name: "vda2", IsPart: true, Parent: "vda", Partname: "etcd-data"}
	vdbBlank    = blockDev{Name: "vdb"}
	vdcBlank    = blockDev{Name: "vdc"}
	vdcOurs     = blockDev{Name: "vdc", FSType: "ext4", Label: "etcd-data"}
	vdbOurs     = blockDev{Name: "vdb", FSType: "ext4", Label: "etcd-data"}
	vdbConfig   = blockDev{Name: "vdb", FSType: "vfat", Label: "config-2"}
	nvmeBoot    = blockDev{Name: "nvme0n1"}
	nvmeBootESP = blockDev{Name: "nvme0n1p1", IsPart: true, Parent: "nvme0n1", Partname: "ESP"}
	nvmeStore   = blockDev{Name: "nvme1n1"} // an instance store: blank at every boot
	nvmeOurs    = blockDev{Name: "nvme2n1", FSType: "ext4", Label: "etcd-data"}
)

func look(at time.Duration, devs ...blockDev) diskLook { return diskLook{At: at, Devs: devs} }

// TestADataDiskWaitsTheWindowForItsLabel: the data disk is picked over
// the device window, look by look. A disk with this appliance's label
// (an ext4 labelled etcd-data, or a partition named so) is taken the
// moment it is seen; a blank disk only once the whole window has passed
// without one. Before, the first blank disk seen was taken (and
// formatted) while the member's own disk was still on its way.
func TestADataDiskWaitsTheWindowForItsLabel(t *testing.T) {
	const s = time.Second
	for _, tc := range []struct {
		name   string
		looks  []diskLook
		at     time.Duration // when the pick is made
		want   string        // the device, or a substring of the error
		refuse bool
	}{
		{name: "its labelled disk, at the first look", at: 0, want: "/dev/vdb",
			looks: []diskLook{look(0, vda, vdaESP, vdbOurs)}},
		{name: "a blank disk first, its labelled disk 3 s later", at: 3 * s, want: "/dev/vdc",
			looks: []diskLook{look(0, vda, vdaESP, vdbBlank), look(s, vda, vdaESP, vdbBlank), look(3*s, vda, vdaESP, vdbBlank, vdcOurs), look(10*s, vda, vdaESP, vdbBlank, vdcOurs)}},
		{name: "an instance store first, the data volume late in the window", at: 9 * s, want: "/dev/nvme2n1",
			looks: []diskLook{look(0, nvmeBoot, nvmeBootESP, nvmeStore), look(5*s, nvmeBoot, nvmeBootESP, nvmeStore), look(9*s, nvmeBoot, nvmeBootESP, nvmeStore, nvmeOurs)}},
		{name: "a blank disk first, a partition named etcd-data later", at: 2 * s, want: "/dev/vda2",
			looks: []diskLook{look(0, vda, vdaESP, vdbBlank), look(2*s, vda, vdaESP, vdaData, vdbBlank)}},
		{name: "only a blank disk: taken when the window closes", at: 10 * s, want: "/dev/vdb",
			looks: []diskLook{look(0, vda, vdaESP, vdbBlank), look(5*s, vda, vdaESP, vdbBlank), look(9900*time.Millisecond, vda, vdaESP, vdbBlank), look(10*s, vda, vdaESP, vdbBlank)}},
		{name: "a blank disk appearing late", at: 10 * s, want: "/dev/vdc",
			looks: []diskLook{look(0, vda, vdaESP), look(7*s, vda, vdaESP, vdcBlank), look(10*s, vda, vdaESP, vdcBlank)}},
		{name: "its labelled disk beside a blank one", at: 0, want: "/dev/vdc",
			looks: []diskLook{look(0, vda, vdaESP, vdbBlank, vdcOurs)}},
		{name: "a config drive is not a data disk", at: 10 * s, want: "/dev/vdc",
			looks: []diskLook{look(0, vda, vdaESP, vdbConfig, vdcBlank), look(10*s, vda, vdaESP, vdbConfig, vdcBlank)}},
		{name: "no data disk at all", at: 10 * s, refuse: true, want: "no data disk among [vda vda1]",
			looks: []diskLook{look(0, vda, vdaESP), look(10*s, vda, vdaESP)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := range tc.looks {
				dev, done, err := pickFromLooks(tc.looks[:i+1], DeviceWait)
				if !done {
					continue
				}
				at := tc.looks[i].At
				switch {
				case at != tc.at:
					t.Fatalf("decided at %s (%q, %v); want at %s", at, dev, err, tc.at)
				case tc.refuse && (err == nil || !strings.Contains(err.Error(), tc.want)):
					t.Fatalf("picked %q, %v; want an error naming %q", dev, err, tc.want)
				case !tc.refuse && (err != nil || dev != tc.want):
					t.Fatalf("picked %q, %v; want %s", dev, err, tc.want)
				}
				return
			}
			t.Fatalf("no decision after %d looks; want one at %s", len(tc.looks), tc.at)
		})
	}
}

// TestAMemberWithoutDataWaitsOutTheWindow: a member about to start
// without etcd data (its disk blank and about to be formatted, or ours
// with no WAL) goes on only once the device window has closed with no
// other disk of this appliance's label; one that appears stops it: the
// member's data may be on it, and a member without data bootstraps or
// joins as new.
func TestAMemberWithoutDataWaitsOutTheWindow(t *testing.T) {
	const s = time.Second
	for _, tc := range []struct {
		name   string
		taken  string
		looks  []diskLook
		at     time.Duration // when it is decided
		refuse string        // a substring of the refusal, or ""
	}{
		{name: "a blank disk taken when the window closed", taken: "/dev/vdb", at: 10 * s,
			looks: []diskLook{look(10*s, vda, vdaESP, vdbBlank)}},
		{name: "ours without data, found early: waits out the window", taken: "/dev/vdb", at: 10 * s,
			looks: []diskLook{look(2*s, vda, vdaESP, vdbOurs), look(6*s, vda, vdaESP, vdbOurs), look(10*s, vda, vdaESP, vdbOurs)}},
		{name: "ours without data, and another of ours appears", taken: "/dev/vdb", at: 6 * s, refuse: "/dev/vdc, appeared 6s after",
			looks: []diskLook{look(2*s, vda, vdaESP, vdbOurs), look(6*s, vda, vdaESP, vdbOurs, vdcOurs), look(10*s, vda, vdaESP, vdbOurs, vdcOurs)}},
		{name: "a partition named etcd-data without data, and a disk of ours appears", taken: "/dev/vda2", at: 3 * s, refuse: "/dev/vdc",
			looks: []diskLook{look(s, vda, vdaESP, vdaData), look(3*s, vda, vdaESP, vdaData, vdcOurs)}},
		{name: "a blank disk and a config drive", taken: "/dev/vdc", at: 10 * s,
			looks: []diskLook{look(10*s, vda, vdaESP, vdbConfig, vdcBlank)}},
		{name: "another blank disk is no reason to stop", taken: "/dev/vdb", at: 10 * s,
			looks: []diskLook{look(4*s, vda, vdaESP, vdbOurs), look(10*s, vda, vdaESP, vdbOurs, vdcBlank)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := range tc.looks {
				done, err := confirmAlone(tc.looks[:i+1], tc.taken, DeviceWait)
				if !done {
					continue
				}
				at := tc.looks[i].At
				switch {
				case at != tc.at:
					t.Fatalf("decided at %s (%v); want at %s", at, err, tc.at)
				case tc.refuse == "" && err != nil:
					t.Fatalf("refused: %v", err)
				case tc.refuse != "" && (err == nil || !strings.Contains(err.Error(), tc.refuse)):
					t.Fatalf("%v; want a refusal naming %q", err, tc.refuse)
				}
				return
			}
			t.Fatalf("no decision after %d looks; want one at %s", len(tc.looks), tc.at)
		})
	}
}

// TestAnInterruptedFirstFormatIsNotYetLabelled: the data disk's picking
// takes a disk whose first format was cut (it may carry the label
// already) as a blank one, not as the member's own disk, so that it
// waits the window for that.
func TestAnInterruptedFirstFormatIsNotYetLabelled(t *testing.T) {
	for _, tc := range []struct {
		name      string
		make      func(t *testing.T, p string)
		interrupt bool
	}{
		{"blank", func(*testing.T, string) {}, false},
		{"format not yet confirmed", func(t *testing.T, p string) {
			if err := format(t, p); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"format confirmed", func(t *testing.T, p string) {
			if err := format(t, p); err != nil {
				t.Fatal(err)
			}
			if err := ClearIntent(p); err != nil {
				t.Fatal(err)
			}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := sparse(t, 256<<20)
			tc.make(t, p)
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if got := interruptedFormat(f); got != tc.interrupt {
				t.Errorf("interrupted %v, want %v", got, tc.interrupt)
			}
		})
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
