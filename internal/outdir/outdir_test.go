package outdir

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestWriteNewDirectoryAppearsWhole(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "out")
	files := []File{{"a.txt", []byte("a"), 0o644}, {"pki/k.pem", []byte("k"), 0o600}}
	changed, err := Write(dir, files)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(changed, []string{"a.txt", "pki/k.pem"}) {
		t.Errorf("changed %v", changed)
	}
	st, _ := os.Stat(filepath.Join(dir, "pki/k.pem"))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v", st.Mode())
	}
	if st, _ := os.Stat(filepath.Join(dir, "pki")); st.Mode().Perm() != 0o700 {
		t.Errorf("pki dir mode %v", st.Mode())
	}
	entries, _ := os.ReadDir(parent)
	if len(entries) != 1 {
		t.Errorf("temporary directories left behind: %v", entries)
	}
}

func TestWriteLeavesUnchangedFilesAlone(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	if _, err := Write(dir, []File{{"a", []byte("a"), 0o644}, {"b", []byte("b"), 0o644}}); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	os.Chtimes(filepath.Join(dir, "a"), old, old)
	changed, err := Write(dir, []File{{"a", []byte("a"), 0o644}, {"b", []byte("B"), 0o644}, {"c", []byte("c"), 0o600}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(changed, []string{"b", "c"}) {
		t.Errorf("changed %v", changed)
	}
	if st, _ := os.Stat(filepath.Join(dir, "a")); !st.ModTime().Equal(old) {
		t.Errorf("unchanged file was rewritten")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "b")); string(b) != "B" {
		t.Errorf("b = %q", b)
	}
}

func TestWriteFailureChangesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	if _, err := Write(dir, []File{{"a", []byte("a"), 0o644}, {"blocker", []byte("x"), 0o644}}); err != nil {
		t.Fatal(err)
	}
	// "blocker/x" cannot be created because blocker is a file; "a" must
	// stay as it was even though it comes first.
	if _, err := Write(dir, []File{{"a", []byte("new"), 0o644}, {"blocker/x", []byte("x"), 0o644}}); err == nil {
		t.Fatal("write under a file succeeded")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "a")); string(b) != "a" {
		t.Errorf("a = %q after a failed write", b)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("staged files left behind: %v", entries)
	}
	if _, err := Write(dir, []File{{"../escape", nil, 0o644}}); err == nil {
		t.Error("a path outside the directory was accepted")
	}
}

// TestRenameFailureRollsBackTheCommit: with the fourth rename failing,
// the files already renamed get their old bytes back, a new file is
// removed, and nothing is left behind. (Before the journal, etcdimg.yaml
// and pki/etcd-2.* took the new IP while ignition/etcd-2.* kept the old.)
func TestRenameFailureRollsBackTheCommit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	if _, err := Write(dir, []File{{"etcdimg.yaml", []byte("ip: 1"), 0o644}, {"pki/etcd-2.pem", []byte("cert 1"), 0o600}}); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(dir, []File{{"ignition/etcd-2.ign", []byte("config 1"), 0o600}}); err != nil {
		t.Fatal(err)
	}
	calls := 0
	rename = func(from, to string) error {
		if calls++; strings.HasSuffix(to, "etcd-2.ign") {
			return fmt.Errorf("rename %s: %w", to, syscall.EIO)
		}
		return os.Rename(from, to)
	}
	defer func() { rename = os.Rename }()
	_, err := Write(dir, []File{
		{"etcdimg.yaml", []byte("ip: 2"), 0o644},
		{"pki/etcd-2.pem", []byte("cert 2"), 0o600},
		{"pki/etcd-4.pem", []byte("new"), 0o600},
		{"ignition/etcd-2.ign", []byte("config 2"), 0o600},
	})
	if err == nil || !strings.Contains(err.Error(), "nothing was changed") {
		t.Fatalf("err = %v", err)
	}
	if calls != 4 {
		t.Errorf("%d renames tried, want the fourth to fail", calls)
	}
	for p, want := range map[string]string{"etcdimg.yaml": "ip: 1", "pki/etcd-2.pem": "cert 1", "ignition/etcd-2.ign": "config 1"} {
		if b, _ := os.ReadFile(filepath.Join(dir, p)); string(b) != want {
			t.Errorf("%s = %q after the failed commit, want %q", p, b, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "pki", "etcd-4.pem")); err == nil {
		t.Error("a new file of the failed commit stayed")
	}
	assertClean(t, dir)
}

// TestInterruptedCommitIsUndoneNextTime: a commit that dies after its
// first rename leaves its journal; the next Write undoes that rename
// before doing its own work.
func TestInterruptedCommitIsUndoneNextTime(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	if _, err := Write(dir, []File{{"etcdimg.yaml", []byte("ip: 1"), 0o644}, {"pki/etcd-2.pem", []byte("cert 1"), 0o600}}); err != nil {
		t.Fatal(err)
	}
	crashAfter = 1
	_, err := Write(dir, []File{{"etcdimg.yaml", []byte("ip: 2"), 0o644}, {"pki/etcd-2.pem", []byte("cert 2"), 0o600}})
	crashAfter = -1
	if err != errCrash {
		t.Fatalf("err = %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "etcdimg.yaml")); string(b) != "ip: 2" {
		t.Fatalf("the simulated crash did not happen after the first rename: %q", b)
	}
	undone, err := Recover(dir)
	if err != nil || !undone {
		t.Fatalf("Recover: %v %v", undone, err)
	}
	for p, want := range map[string]string{"etcdimg.yaml": "ip: 1", "pki/etcd-2.pem": "cert 1"} {
		if b, _ := os.ReadFile(filepath.Join(dir, p)); string(b) != want {
			t.Errorf("%s = %q after recovery, want %q", p, b, want)
		}
	}
	assertClean(t, dir)
	if changed, err := Write(dir, []File{{"etcdimg.yaml", []byte("ip: 2"), 0o644}, {"pki/etcd-2.pem", []byte("cert 2"), 0o600}}); err != nil || len(changed) != 2 {
		t.Errorf("the next write: %v %v", changed, err)
	}
	assertClean(t, dir)
}

// assertClean fails if a journal, a kept old file or a staged file is
// left anywhere under dir.
func assertClean(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasPrefix(d.Name(), ".") {
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
}

// TestGuardClosesOpenKeysAndRefusesForeignSymlinks: a pki/ at 0777 with
// the CA key at 0644 is closed with a warning for each; a pki symlink to
// a directory others can write is refused before anything is touched.
func TestGuardClosesOpenKeysAndRefusesForeignSymlinks(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "pki"), 0o777)
	os.WriteFile(filepath.Join(dir, "pki", "etcd-ca-key.pem"), []byte("key"), 0o644)
	os.WriteFile(filepath.Join(dir, "pki", "etcd-ca.pem"), []byte("cert"), 0o644)
	os.Mkdir(filepath.Join(dir, "ignition"), 0o700)
	os.WriteFile(filepath.Join(dir, "ignition", "etcd-1.ign"), []byte("{}"), 0o640)
	os.Mkdir(filepath.Join(dir, S3Dir), 0o700)
	os.WriteFile(Layout(dir).S3Credentials(), []byte("AWS_SECRET_ACCESS_KEY=x\n"), 0o644)
	os.WriteFile(Layout(dir).S3CA(), []byte("cert"), 0o644)
	w, err := Guard(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(w) != 4 || !strings.Contains(w[0], "pki was mode 0777") || !strings.Contains(w[1], "etcd-ca-key.pem was mode 0644") || !strings.Contains(w[1], "treat the key as exposed") || !strings.Contains(w[2], "etcd-1.ign was mode 0640") || !strings.Contains(w[3], "credentials.env was mode 0644") {
		t.Errorf("warnings %q", w)
	}
	for p, want := range map[string]fs.FileMode{"pki": 0o700, "pki/etcd-ca-key.pem": 0o600, "pki/etcd-ca.pem": 0o644, "ignition/etcd-1.ign": 0o600, "s3/credentials.env": 0o600, "s3/ca.pem": 0o644} {
		if st, _ := os.Stat(filepath.Join(dir, p)); st.Mode().Perm() != want {
			t.Errorf("%s is %04o, want %04o", p, st.Mode().Perm(), want)
		}
	}
	if w, err := Guard(dir); err != nil || len(w) != 0 {
		t.Errorf("second run: %q %v", w, err)
	}

	open := t.TempDir()
	os.Chmod(open, 0o777)
	os.WriteFile(filepath.Join(open, "etcd-ca-key.pem"), []byte("key"), 0o644)
	linked := t.TempDir()
	os.Symlink(open, filepath.Join(linked, "pki"))
	if _, err := Guard(linked); err == nil || !strings.Contains(err.Error(), "a directory other users can write (mode 0777") {
		t.Errorf("symlink to an open directory: %v", err)
	}
	if st, _ := os.Stat(filepath.Join(open, "etcd-ca-key.pem")); st.Mode().Perm() != 0o644 {
		t.Error("the refused run changed the target")
	}
	own := t.TempDir()
	os.Chmod(own, 0o700)
	ok := t.TempDir()
	os.Symlink(own, filepath.Join(ok, "pki"))
	if _, err := Guard(ok); err != nil {
		t.Errorf("symlink to a private directory of one's own: %v", err)
	}
}
