package render

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"etcdimg/internal/outdir"
)

// TestWriteDefaultSpecWritesOnceAndLoads: init writes a spec that the
// next run reads back with its members, refuses to write over it, and
// refuses a member count the spec cannot have.
func TestWriteDefaultSpecWritesOnceAndLoads(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new")
	path := filepath.Join(dir, "etcdimg.yaml")
	c, err := WriteDefaultSpec(path, 5)
	if err != nil {
		t.Fatal(err)
	}
	back, from, err := LoadSpec(Source{}, outdir.Layout(dir))
	if err != nil || from != path || len(back.Members) != 5 || back.Name != c.Name {
		t.Fatalf("read back %v from %q: %v", back, from, err)
	}
	before, _ := os.ReadFile(path)
	if _, err := WriteDefaultSpec(path, 3); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("over an existing spec: %v", err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Error("the existing spec was changed")
	}
	for _, n := range []int{0, 100} {
		if _, err := WriteDefaultSpec(filepath.Join(t.TempDir(), "s.yaml"), n); err == nil || !strings.HasPrefix(err.Error(), "--nodes") {
			t.Errorf("--nodes %d: %v", n, err)
		}
	}
}
