package slots

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"etcdimg/internal/layout"
	"etcdimg/internal/slot"
)

// TestAnUpdateLeavesOutWhatTheMemberRuns: the host leaves out of an
// update the files the running slot holds with the same digest (the node
// binary, when only the config changed); the node copies them from its
// slot, checked against the signed manifest. A running copy that no
// longer matches its own manifest is refused, and nothing is staged.
func TestAnUpdateLeavesOutWhatTheMemberRuns(t *testing.T) {
	f := newFixture(t, slot.Entry{Gen: 1})
	running := f.bundle(runID, testCluster, testMember, "running")
	have := map[string]string{}
	var rm slot.Manifest
	if err := json.Unmarshal(running.Manifest, &rm); err != nil {
		t.Fatal(err)
	}
	for _, fl := range rm.Files {
		have[fl.Name] = fl.SHA256
	}
	next := func(id, tag string) []byte {
		t.Helper()
		files := map[string][]byte{}
		for k, v := range f.bundle(id, testCluster, testMember, tag).Files {
			files[k] = v
		}
		files[slot.FileNode] = running.Files[slot.FileNode] // the same node binary
		b, err := slot.NewBundle(slot.Manifest{Format: slot.Format, ID: id, Cluster: testCluster, Member: testMember, Kernel: "6.1.0", Etcd: "3.7.3"}, files, f.key)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := b.WriteLeavingOut(&buf, have); err != nil {
			t.Fatal(err)
		}
		full, _ := b.Bytes()
		if buf.Len() >= len(full)-len(running.Files[slot.FileNode]) {
			t.Fatalf("the node binary was sent: %d bytes of %d", buf.Len(), len(full))
		}
		return buf.Bytes()
	}
	if _, err := f.install(next("2222222222222222", "config changed")); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(f.root, layout.SlotsDir, "2222222222222222", slot.FileNode))
	if err != nil || !bytes.Equal(got, running.Files[slot.FileNode]) {
		t.Fatalf("the new slot's node binary is not the running one's: %v", err)
	}

	// The running slot's node binary rots on the disk.
	node := filepath.Join(f.root, layout.SlotsDir, runID, slot.FileNode)
	b, _ := os.ReadFile(node)
	b[10] ^= 1
	os.WriteFile(node, b, 0o600)
	_, err = f.install(next("3333333333333333", "again"))
	if err == nil || !strings.Contains(err.Error(), "not the") || !strings.Contains(err.Error(), slot.ErrLeftOut) {
		t.Fatalf("a left-out file that does not match: %v", err)
	}
	for _, n := range f.entryNames() {
		if strings.Contains(n, "3333333333333333") {
			t.Errorf("a refused update left an entry: %s", n)
		}
	}
}

// TestLeftoversOfTheRunningSlotStay: a power cut in the renames that
// committed the running slot may leave its temporary names beside the
// final ones, sharing their clusters on FAT; the next install removes
// other leftovers but never these, which would free the running slot's
// clusters.
func TestLeftoversOfTheRunningSlotStay(t *testing.T) {
	f := newFixture(t, slot.Entry{Gen: 1})
	entry := filepath.Join(f.root, layout.EntryDir, f.run.Name()+".tmp")
	dir := filepath.Join(f.root, layout.SlotsDir, runID+".tmp")
	other := filepath.Join(f.root, layout.EntryDir, "etcdimg-2-3333333333333333+3.efi.tmp")
	os.WriteFile(entry, []byte("shares the running entry's clusters"), 0o600)
	os.MkdirAll(dir, 0o700)
	os.WriteFile(other, []byte("an interrupted install's"), 0o600)
	if _, err := f.install(raw(t, f.bundle("2222222222222222", testCluster, testMember, "next"))); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{entry, dir} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("the running slot's leftover %s was removed", filepath.Base(p))
		}
	}
	if _, err := os.Stat(other); err == nil {
		t.Error("another install's leftover was kept")
	}
}
