package render

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"etcdimg/ignition/ign"
	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// s3Spec is a three-member spec file with backup.s3 naming its
// credentials and CA by relative paths.
const s3Spec = `members:
  - {name: etcd-1, ip: 192.168.2.51}
  - {name: etcd-2, ip: 192.168.2.52}
  - {name: etcd-3, ip: 192.168.2.53}
backup:
  s3: {endpoint: "https://s3.example.net", bucket: etcd, credentialsFile: s3.env, caFile: certs/s3-ca.pem}
`

func writeFile(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o700)
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

// s3Credentials is what member etcd-1's config carries as the S3
// credentials file.
func s3Credentials(t *testing.T, res *Result) string {
	t.Helper()
	cfg, err := ign.Parse(res.Ignition["etcd-1"])
	if err != nil {
		t.Fatal(err)
	}
	b, err := ign.FileContents(cfg, layout.S3CredentialsPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestS3FilesAreFoundBesideTheSpec: backup.s3's credentials and CA are
// read relative to the spec file, not the working directory, and kept in
// the output directory, whose spec names them there: a later run from
// another directory, without --config, embeds the same keys, never that
// directory's s3.env (another account's; issue 21).
func TestS3FilesAreFoundBesideTheSpec(t *testing.T) {
	root := t.TempDir()
	specDir, elsewhere := filepath.Join(root, "cluster"), filepath.Join(root, "elsewhere")
	mine := "AWS_ACCESS_KEY_ID=AKIAMINE\nAWS_SECRET_ACCESS_KEY=minesecret\n"
	writeFile(t, filepath.Join(specDir, "etcdimg.yaml"), s3Spec, 0o644)
	writeFile(t, filepath.Join(specDir, "s3.env"), mine, 0o600)
	ca, err := pki.Ensure(spec.Default(1), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(specDir, "certs", "s3-ca.pem"), string(ca.CACert), 0o644)
	writeFile(t, filepath.Join(elsewhere, "s3.env"), "AWS_ACCESS_KEY_ID=AKIAOTHER\nAWS_SECRET_ACCESS_KEY=othersecret\n", 0o600)
	writeFile(t, filepath.Join(elsewhere, "certs", "s3-ca.pem"), "not a certificate\n", 0o644)
	out := outdir.Layout(filepath.Join(root, "out"))

	t.Chdir(elsewhere)
	for _, run := range []struct {
		name string
		src  Source
	}{
		{"--config from another directory", Source{ConfigPath: filepath.Join("..", "cluster", "etcdimg.yaml")}},
		{"the output directory's spec", Source{}},
	} {
		c, _, err := LoadSpec(run.src, out)
		if err != nil {
			t.Fatalf("%s: %v", run.name, err)
		}
		res, err := Run(c, out)
		if err != nil {
			t.Fatalf("%s: %v", run.name, err)
		}
		if got := s3Credentials(t, res); got != mine {
			t.Errorf("%s: the members carry %q, want the spec's own %q", run.name, got, mine)
		}
		saved, err := os.ReadFile(out.Spec())
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(saved), "credentialsFile: "+filepath.Join("s3", "credentials.env")) || !strings.Contains(string(saved), "caFile: "+filepath.Join("s3", "ca.pem")) {
			t.Errorf("%s: the saved spec does not name the copies in the output directory:\n%s", run.name, saved)
		}
		for p, want := range map[string]string{out.S3Credentials(): mine, out.S3CA(): string(ca.CACert)} {
			b, err := os.ReadFile(p)
			st, _ := os.Stat(p)
			if err != nil || string(b) != want || (p == out.S3Credentials() && st.Mode().Perm() != 0o600) {
				t.Errorf("%s: %s = %q (%v), want the spec's file, private", run.name, p, b, err)
			}
		}
	}
}

// TestS3CredentialsErrorsKeepTheSecret: a malformed credentials file is
// refused naming its line and key, never echoing the line (the secret);
// a FIFO is refused at once (issue 21).
func TestS3CredentialsErrorsKeepTheSecret(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.env")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, data, want string
	}{
		{"unbalanced quote", "AWS_ACCESS_KEY_ID=AKIAX\nAWS_SECRET_ACCESS_KEY=\"s3cr3tvalue\n", "line 2 (AWS_SECRET_ACCESS_KEY)"},
		{"no equals sign", "AWS_ACCESS_KEY_ID=AKIAX\ns3cr3tvalue\n", "line 2"},
		{"export prefix", "AWS_ACCESS_KEY_ID=AKIAX\nexport AWS_SECRET_ACCESS_KEY=s3cr3tvalue\n", "line 2"},
		{"secret as a key", "AWS_ACCESS_KEY_ID=AKIAX\ns3cr3t/value=x\n", "line 2"},
		{"stray quote", "AWS_ACCESS_KEY_ID=AKIAX\nAWS_SECRET_ACCESS_KEY=s3cr3t'value\n", "line 2 (AWS_SECRET_ACCESS_KEY)"},
		{"missing key", "AWS_ACCESS_KEY_ID=AKIAX\n", "has no AWS_SECRET_ACCESS_KEY="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			writeFile(t, p, tc.data, 0o600)
			_, err := S3Credentials(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "backup.s3.credentialsFile") {
				t.Fatalf("%v, want an error naming backup.s3.credentialsFile and %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q echoes the secret or is not one line", err)
			}
		})
	}
	done := make(chan error, 1)
	go func() { _, err := S3Credentials(fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("a FIFO: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("reading a FIFO as the credentials did not return")
	}
}
