package image

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"etcdimg/internal/layout"
	"etcdimg/internal/restore"
	"etcdimg/internal/spec"
)

// TestWriteReportSaysWhatItWrote: the boot files, each image with its
// state, and the total, in that order; a second build of the same
// inputs leaves the image unchanged and says so.
func TestWriteReportSaysWhatItWrote(t *testing.T) {
	c := spec.Default(2)
	dir := testDir(t)
	b := Build{Cluster: c, Dir: dir, Platform: layout.PlatformQEMU, Formats: raw(t), Only: []string{"etcd-1"}}
	for _, state := range []string{"new", "unchanged"} {
		var out strings.Builder
		w, err := b.WriteReport(&out, fakeBoot(), configs(c), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if w.Raw["etcd-1"] != dir.Image("etcd-1") {
			t.Errorf("raw images %v", w.Raw)
		}
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if len(lines) != 3 ||
			lines[0] != "boot     kernel 6.1.0-test, 0 modules, initramfs 2.0 MiB (0.0 MiB unpacked)" ||
			!strings.HasPrefix(lines[1], "image    etcd-1   "+dir.Image("etcd-1")+" (") || !strings.HasSuffix(lines[1], " allocated, "+state+")") ||
			!strings.HasPrefix(lines[2], "built 1 image files in ") {
			t.Errorf("%s build reported:\n%s", state, out.String())
		}
	}
}

// TestWriteReportOfACloudBuild names each member's config for its
// instance's user-data.
func TestWriteReportOfACloudBuild(t *testing.T) {
	c := spec.Default(2)
	dir := testDir(t)
	b := Build{Cluster: c, Dir: dir, Platform: layout.PlatformAWS, Formats: raw(t)}
	var out strings.Builder
	if _, err := b.WriteReport(&out, fakeBoot(), configs(c), time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, m := range c.Members {
		want := "user-data " + m.Name + "   " + m.IP + strings.Repeat(" ", 15-len(m.IP)) + " " + dir.Ignition(m.Name) + "\n"
		if !strings.Contains(out.String(), want) {
			t.Errorf("lacks %q:\n%s", want, out.String())
		}
	}
	if !strings.Contains(out.String(), "\nboot one instance per member from the image, with that member's fixed private IP and its config as user-data\nbuilt 1 image files in ") {
		t.Errorf("cloud build reported:\n%s", out.String())
	}
}

// TestWriteReportNamesTheRestoreEvenWhenWritingFails: the restore every
// image carries is said as soon as it is read; a write that fails then
// reports no image and no total.
func TestWriteReportNamesTheRestoreEvenWhenWritingFails(t *testing.T) {
	c := spec.Default(1)
	dir := testDir(t)
	os.MkdirAll(dir.Dir(), 0o700)
	plan := `{"token":"tok","snapshot":"restore/snapshot.db","size":2097152,"revision":7,"totalKeys":3}`
	if err := os.WriteFile(filepath.Join(dir.Dir(), restore.PlanFile), []byte(plan), 0o600); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(dir.ImagesDir(), []byte("a file where the images go"), 0o600)
	var out strings.Builder
	b := Build{Cluster: c, Dir: dir, Platform: layout.PlatformQEMU, Formats: raw(t)}
	if _, err := b.WriteReport(&out, fakeBoot(), configs(c), time.Now()); err == nil {
		t.Fatal("wrote images into a file")
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "restore  every image carries "+filepath.Join(dir.Dir(), "restore", "snapshot.db")+" (2.0 MiB, revision 7, 3 keys) for the new cluster tok") {
		t.Errorf("reported:\n%s", out.String())
	}
}
