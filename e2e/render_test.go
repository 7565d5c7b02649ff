package e2e

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"etcdimg/ignition"
	"etcdimg/ignition/ign"
	"etcdimg/pki"
)

// etcdimg runs the CLI and returns its stdout, stderr and exit code.
func etcdimg(t testing.TB, dir string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin.etcdimg, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// tree hashes every file under dir, with its mode.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, _ := d.Info()
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			out[rel+"/"] = info.Mode().String()
			return nil
		}
		b, _ := os.ReadFile(p)
		out[rel] = fmt.Sprintf("%s %x", info.Mode(), sha256.Sum256(b))
		return nil
	})
	return out
}

// TestRenderWritesTheOutputDirectory is docs/output-directory.md's `etcdimg render`.
func TestRenderWritesTheOutputDirectory(t *testing.T) {
	work := t.TempDir()
	stdout, stderr, code := etcdimg(t, work, "render", "--nodes", "3")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	t.Logf("render:\n%s", stdout)
	out := filepath.Join(work, "etcdimg-out")
	var files []string
	for p := range tree(t, out) {
		if !strings.HasSuffix(p, "/") {
			files = append(files, p)
		}
	}
	sort.Strings(files)
	want := []string{
		"cluster-id.json", "etcdctl.env", "etcdimg.yaml", "grafana-dashboard.json",
		"ignition/etcd-1.bu", "ignition/etcd-1.ign", "ignition/etcd-2.bu", "ignition/etcd-2.ign", "ignition/etcd-3.bu", "ignition/etcd-3.ign",
		"kubernetes/apiserver-etcd-client-key.pem", "kubernetes/apiserver-etcd-client.pem", "kubernetes/etcd-ca.pem",
		"kubernetes/k3s-datastore.yaml", "kubernetes/kubeadm-etcd.yaml",
		"pki/admin-key.pem", "pki/admin.pem", "pki/ca-config.json",
		"pki/etcd-1-key.pem", "pki/etcd-1.pem", "pki/etcd-2-key.pem", "pki/etcd-2.pem", "pki/etcd-3-key.pem", "pki/etcd-3.pem",
		"pki/etcd-ca-key.pem", "pki/etcd-ca.pem", "pki/image-signing.key", "pki/image-signing.pub",
		"prometheus-rules.yml", "prometheus.yml",
	}
	if strings.Join(files, " ") != strings.Join(want, " ") {
		t.Errorf("files:\n%v\nwant\n%v", files, want)
	}
	for _, f := range files {
		st, _ := os.Stat(filepath.Join(out, f))
		if (strings.HasSuffix(f, "-key.pem") || strings.HasSuffix(f, ".key")) && st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode())
		}
	}
	for _, d := range []string{"pki", "ignition", "kubernetes"} {
		if st, _ := os.Stat(filepath.Join(out, d)); st.Mode().Perm() != 0o700 {
			t.Errorf("%s/ mode %v, want 0700: it holds private keys", d, st.Mode())
		}
	}

	// No rendered file, decoded all the way, holds the CA key.
	caKey, err := os.ReadFile(filepath.Join(out, "pki/etcd-ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f == "pki/etcd-ca-key.pem" {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(out, f))
		if pki.ContainsKey(b, caKey) {
			t.Errorf("%s holds the CA key", f)
		}
		if strings.HasSuffix(f, ".ign") {
			cfg, err := ign.Parse(b)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(b) > ignition.MaxConfigBytes {
				t.Errorf("%s is %d bytes", f, len(b))
			}
			for _, file := range cfg.Storage.Files {
				data, err := ign.Contents(file)
				if err != nil {
					t.Fatal(err)
				}
				if pki.ContainsKey(data, caKey) {
					t.Errorf("%s: %s holds the CA key", f, file.Path)
				}
			}
		}
	}

	// The next run reads the spec back and changes nothing: the CA stays
	// byte-identical.
	before := tree(t, out)
	stdout, stderr, code = etcdimg(t, work, "render")
	if code != 0 {
		t.Fatalf("rerun: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "etcdimg-out/etcdimg.yaml") || !strings.Contains(stdout, "0 written, 30 unchanged") {
		t.Errorf("rerun output:\n%s", stdout)
	}
	after := tree(t, out)
	for p, h := range before {
		if after[p] != h {
			t.Errorf("rerun changed %s", p)
		}
	}

	// Moving a member reissues only its certificate; the CA is untouched.
	spec := filepath.Join(out, "etcdimg.yaml")
	b, _ := os.ReadFile(spec)
	edited := filepath.Join(work, "edited.yaml")
	os.WriteFile(edited, bytes.Replace(b, []byte("192.168.2.53"), []byte("192.168.2.63"), 1), 0o644)
	stdout, stderr, code = etcdimg(t, work, "render", "--config", edited)
	if code != 0 {
		t.Fatalf("edited: exit %d: %s", code, stderr)
	}
	after = tree(t, out)
	for _, p := range []string{"pki/etcd-ca.pem", "pki/etcd-ca-key.pem", "pki/etcd-1.pem", "pki/etcd-2.pem", "pki/admin.pem"} {
		if after[p] != before[p] {
			t.Errorf("moving etcd-3 changed %s", p)
		}
	}
	for _, p := range []string{"pki/etcd-3.pem", "pki/etcd-3-key.pem", "ignition/etcd-1.ign", "etcdimg.yaml"} {
		if after[p] == before[p] {
			t.Errorf("moving etcd-3 left %s unchanged", p)
		}
	}
	if !strings.Contains(stdout, "etcd-3   192.168.2.63    cert issued") {
		t.Errorf("output does not say etcd-3 was reissued:\n%s", stdout)
	}
}

// TestBadInputIsRefusedAndNothingWritten: every refusal is one line on
// stderr, a non-zero exit, and leaves the output directory as it was.
func TestBadInputIsRefusedAndNothingWritten(t *testing.T) {
	work := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(work, name)
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}
	three := "members:\n  - {name: etcd-1, ip: 192.168.2.51}\n  - {name: etcd-2, ip: 192.168.2.52}\n  - {name: etcd-3, ip: 192.168.2.53}\n"
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"zero nodes", []string{"--nodes", "0"}, 1, "--nodes 0: want 1 to 9 members"},
		{"negative nodes", []string{"--nodes", "-2"}, 1, "--nodes -2"},
		{"ten nodes", []string{"--nodes", "10"}, 1, "--nodes 10"},
		{"not a number", []string{"--nodes", "three"}, 2, "invalid argument"},
		{"unknown flag", []string{"--node", "3"}, 2, "unknown flag"},
		{"both sources", []string{"--nodes", "3", "--config", write("ok.yaml", three)}, 1, "--nodes and --config both given"},
		{"missing config", []string{"--config", filepath.Join(work, "nope.yaml")}, 1, "no such file"},
		{"duplicate ip", []string{"--config", write("dup.yaml", strings.Replace(three, ".52", ".51", 1))}, 1, "members[1].ip 192.168.2.51 is also members[0].ip"},
		{"ip outside cidr", []string{"--config", write("cidr.yaml", strings.Replace(three, "192.168.2.53", "10.0.0.9", 1))}, 1, "members[2].ip 10.0.0.9 is outside network.cidr"},
		{"election timeout", []string{"--config", write("el.yaml", three+"etcd: {electionTimeout: 300ms}\n")}, 1, "etcd.electionTimeout 300ms is under 5"},
		{"unknown field", []string{"--config", write("unk.yaml", three+"etcd: {heartbeat: 100ms}\n")}, 1, "unknown field etcd.heartbeat"},
		{"bad size", []string{"--config", write("size.yaml", three+"etcd: {backendQuota: lots}\n")}, 1, "etcd.backendQuota"},
		{"bad name", []string{"--config", write("name.yaml", strings.Replace(three, "etcd-2", "etcd_2", 1))}, 1, `members[1].name "etcd_2"`},
		{"endless spec", []string{"--config", "/dev/zero"}, 1, "spec: /dev/zero is not a regular file (a device)"},
		{"second document", []string{"--config", write("two.yaml", three+"---\n"+three)}, 1, "holds more than one YAML document"},
		{"empty out", []string{"--out", ""}, 1, "--out is empty"},
		{"out is a file", []string{"--out", write("a-file", "x")}, 1, "is a file, not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(work, "out-"+strings.ReplaceAll(tc.name, " ", "-"))
			_, stderr, code := etcdimg(t, work, append([]string{"render", "--out", out}, tc.args...)...)
			if code != tc.code {
				t.Errorf("exit %d, want %d (%s)", code, tc.code, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q lacks %q", stderr, tc.want)
			}
			if tc.code == 1 && strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("stderr is not one line: %q", stderr)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("refused run created %s", out)
			}
		})
	}

	// A foreign CA in an existing output directory is refused, and the
	// directory is left byte for byte as it was.
	out := filepath.Join(work, "existing")
	if _, stderr, code := etcdimg(t, work, "render", "--out", out); code != 0 {
		t.Fatal(stderr)
	}
	other := filepath.Join(work, "other")
	if _, stderr, code := etcdimg(t, work, "render", "--out", other); code != 0 {
		t.Fatal(stderr)
	}
	foreignKey, _ := os.ReadFile(filepath.Join(other, "pki/etcd-ca-key.pem"))
	os.WriteFile(filepath.Join(out, "pki/etcd-ca-key.pem"), foreignKey, 0o600)
	os.Remove(filepath.Join(out, "pki/etcd-2.pem")) // would be reissued if the CA were accepted
	before := tree(t, out)
	_, stderr, code := etcdimg(t, work, "render", "--out", out)
	if code != 1 || !strings.Contains(stderr, "is not the key of") {
		t.Errorf("foreign CA: exit %d, %q", code, stderr)
	}
	if after := tree(t, out); len(after) != len(before) {
		t.Errorf("foreign CA run changed the directory")
	} else {
		for p, h := range before {
			if after[p] != h {
				t.Errorf("foreign CA run changed %s", p)
			}
		}
	}

	// --nodes that contradicts the spec already in the directory.
	if _, stderr, code := etcdimg(t, work, "render", "--out", other, "--nodes", "5"); code != 1 || !strings.Contains(stderr, "has 3 members") {
		t.Errorf("contradicting --nodes: exit %d, %q", code, stderr)
	}
}

func TestInitWritesTheDefaultSpecOnce(t *testing.T) {
	work := t.TempDir()
	// A bad member count is a bad value (exit 1), as render says it.
	if _, stderr, code := etcdimg(t, work, "init", "--nodes", "0"); code != 1 || !strings.Contains(stderr, "--nodes 0: want 1 to 9") {
		t.Errorf("init --nodes 0: exit %d, %q", code, stderr)
	}
	stdout, stderr, code := etcdimg(t, work, "init", "--nodes", "5")
	if code != 0 {
		t.Fatal(stderr)
	}
	if !strings.Contains(stdout, "wrote etcdimg.yaml (5 members)") {
		t.Errorf("stdout %q", stdout)
	}
	b, _ := os.ReadFile(filepath.Join(work, "etcdimg.yaml"))
	if !bytes.Contains(b, []byte("192.168.2.55")) {
		t.Errorf("spec:\n%s", b)
	}
	// It does not overwrite, and a render reads it.
	if _, stderr, code := etcdimg(t, work, "init"); code != 1 || !strings.Contains(stderr, "already exists") {
		t.Errorf("second init: %d %q", code, stderr)
	}
	if stdout, stderr, code := etcdimg(t, work, "render", "--config", "etcdimg.yaml"); code != 0 || !strings.Contains(stdout, "etcd-5") {
		t.Errorf("render of init's spec: %d %s %s", code, stdout, stderr)
	}
	// Four members render, with a warning.
	if _, stderr, code := etcdimg(t, work, "render", "--out", "four", "--nodes", "4"); code != 0 || !strings.Contains(stderr, "warning: spec: 4 members tolerate 1 failed member(s), as 3 do") {
		t.Errorf("four members: %d %q", code, stderr)
	}
}

// TestClusterCommandsRefuseWhatTheyCannotDo: the cluster commands, before
// anything is built or booted, fail in one line that says what to run.
func TestClusterCommandsRefuseWhatTheyCannotDo(t *testing.T) {
	work := t.TempDir()
	out := filepath.Join(work, "out")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"up with nothing built", []string{"up", "--out", out}, 1, "run `etcdimg build --out"},
		{"health with nothing built", []string{"health", "--out", out}, 1, "has no etcdimg.yaml"},
		{"etcdctl with nothing built", []string{"etcdctl", "--out", out, "--", "member", "list"}, 1, "has no etcdimg.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := etcdimg(t, work, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr, tc.code, tc.want)
			}
		})
	}
	if _, stderr, code := etcdimg(t, work, "render", "--nodes", "3", "--out", out); code != 0 {
		t.Fatal(stderr)
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"up before build", []string{"up", "--out", out}, 1, "images/etcd-1.img is missing; run `etcdimg build"},
		{"up with too little memory", []string{"up", "--out", out, "--memory", "64"}, 2, "--memory 64"},
		{"status when not running", []string{"status", "--out", out}, 1, "not running"},
		{"stop when not running", []string{"stop", "etcd-1", "--out", out}, 1, "no cluster runs here under `etcdimg up`"},
		{"start when not running", []string{"start", "etcd-1", "--out", out}, 1, "no cluster runs here under `etcdimg up`"},
		{"up with a data disk too small", []string{"up", "--out", out, "--data-size", "100MiB"}, 2, "--data-size 100MiB"},
		{"replace of a member not in the spec", []string{"replace", "etcd-9", "--out", out}, 1, `no member "etcd-9" in the spec`},
		{"roll of a cluster that does not answer", []string{"roll", "--out", out, "--timeout", "5s"}, 1, "roll: refused, the cluster does not answer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := etcdimg(t, work, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr, tc.code, tc.want)
			}
		})
	}
	if stdout, _, code := etcdimg(t, work, "down", "--out", out); code != 0 || !strings.Contains(stdout, "no cluster is running") {
		t.Errorf("down when not running: exit %d, %q", code, stdout)
	}
	if _, err := os.Stat(filepath.Join(out, "run")); err == nil {
		t.Errorf("a refused command created %s/run", out)
	}
}
