package outdir

import (
	"os"
	"path/filepath"
	"slices"
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
