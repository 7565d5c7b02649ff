package render

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
)

// TestRemovedMembersAreRetired: a member dropped from the spec leaves no
// key, certificate or config among the live ones; they are moved, whole
// and private, under retired/, and the output says so.
func TestRemovedMembersAreRetired(t *testing.T) {
	dir := outdir.Layout(filepath.Join(t.TempDir(), "out"))
	// With metrics.tls the scraper's pair (CN prometheus) sits in pki/
	// like a member's: it is not one, and stays.
	three, two := spec.Default(3), spec.Default(2)
	three.Metrics.TLS, two.Metrics.TLS = true, true
	if _, err := Run(three, dir); err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(dir.PKIFile("etcd-3-key.pem"))
	os.MkdirAll(dir.ImagesDir(), 0o700)
	os.WriteFile(dir.Image("etcd-3"), []byte("image"), 0o600)
	res, err := Run(two, dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"pki/etcd-3.pem", "pki/etcd-3-key.pem", "ignition/etcd-3.ign", "ignition/etcd-3.bu", "images/etcd-3.img"}
	if !slices.Equal(res.Retired, want) {
		t.Fatalf("retired %v, want %v", res.Retired, want)
	}
	for _, p := range want {
		if _, err := os.Stat(filepath.Join(dir.Dir(), p)); err == nil {
			t.Errorf("%s is still among the live files", p)
		}
	}
	moved, _ := filepath.Glob(filepath.Join(dir.Dir(), RetiredDir, "*", "pki", "etcd-3-key.pem"))
	if len(moved) != 1 {
		t.Fatalf("retired key: %v", moved)
	}
	if b, _ := os.ReadFile(moved[0]); string(b) != string(key) {
		t.Error("the retired key is not the member's key")
	}
	for _, d := range []string{filepath.Join(dir.Dir(), RetiredDir), filepath.Dir(filepath.Dir(moved[0]))} {
		if st, _ := os.Stat(d); st.Mode().Perm() != 0o700 {
			t.Errorf("%s is %04o", d, st.Mode().Perm())
		}
	}
	// The CA, the admin and the members kept are untouched; a second run
	// retires nothing.
	for _, p := range []string{"pki/etcd-ca-key.pem", "pki/admin.pem", "pki/etcd-2.pem", "ignition/etcd-1.ign", "pki/prometheus.pem", "kubernetes/apiserver-etcd-client-key.pem"} {
		if _, err := os.Stat(filepath.Join(dir.Dir(), p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if res, err := Run(two, dir); err != nil || len(res.Retired) != 0 {
		t.Errorf("second run: %v %v", res.Retired, err)
	}
	if strings.Contains(strings.Join(res.Files, " "), "etcd-3") {
		t.Errorf("files %v", res.Files)
	}
}

// TestRetiringTwiceInOneSecondKeepsBoth: a second file retired under the
// same stamp and path gets a name of its own; nothing retired is lost.
func TestRetiringTwiceInOneSecondKeepsBoth(t *testing.T) {
	dir := outdir.Layout(t.TempDir())
	os.MkdirAll(filepath.Join(dir.Dir(), "clients"), 0o700)
	for _, content := range []string{"first", "second"} {
		os.WriteFile(filepath.Join(dir.Dir(), "clients", "app-key.pem"), []byte(content), 0o600)
		if moved, err := MoveToRetired(dir, "20261128T000000", []string{"clients/app-key.pem"}); err != nil || len(moved) != 1 {
			t.Fatalf("%v %v", moved, err)
		}
	}
	for name, want := range map[string]string{"app-key.pem": "first", "app-key.pem.1": "second"} {
		if b, _ := os.ReadFile(filepath.Join(RetiredPath(dir, "20261128T000000"), "clients", name)); string(b) != want {
			t.Errorf("%s = %q, want %q", name, b, want)
		}
	}
}
