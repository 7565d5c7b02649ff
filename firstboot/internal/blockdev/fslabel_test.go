package blockdev

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"etcdimg/internal/cloudsim"
)

// testConfig is a config as a config drive carries it.
const testConfig = `{"ignition":{"version":"3.4.0"}}`

// TestProbeFS reads the labels the system tools and go-diskfs write.
func TestProbeFS(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, args ...string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, nil, 0o600)
		os.Truncate(p, 64<<20)
		if len(args) > 0 {
			if out, err := exec.Command(args[0], append(args[1:], p)...).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", args[0], err, out)
			}
		}
		return p
	}
	iso := filepath.Join(dir, "cd.iso")
	if err := cloudsim.ConfigDrive(iso, []byte(testConfig), "iso9660"); err != nil {
		t.Fatal(err)
	}
	vfat := filepath.Join(dir, "cd.vfat")
	if err := cloudsim.ConfigDrive(vfat, []byte(testConfig), "vfat"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, fstype, label string }{
		{mk("ext4", "mkfs.ext4", "-q", "-L", "etcd-data"), "ext4", "etcd-data"},
		{mk("fat32", "mkfs.vfat", "-F", "32", "-n", "config-2"), "vfat", "config-2"},
		{mk("fat16", "mkfs.vfat", "-F", "16", "-n", "CONFIG-2"), "vfat", "CONFIG-2"},
		{mk("blank"), "", ""},
		{iso, "iso9660", "config-2"},
		{vfat, "vfat", "config-2"},
	} {
		f, _ := os.Open(tc.path)
		fstype, label := ProbeFS(f)
		f.Close()
		if fstype != tc.fstype || label != tc.label {
			t.Errorf("%s: %q %q, want %q %q", filepath.Base(tc.path), fstype, label, tc.fstype, tc.label)
		}
	}
}
