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

// TestAConfigChangeSendsNoUKI: two slots that differ only in their
// config boot UKIs that differ only in the slot ID on their command
// line. The host leaves the UKI out (slot.Reusable), the member derives
// it from the one it runs and checks it against the signed manifest: the
// staged entry is the new UKI, byte for byte. A UKI that differs in more
// (a new kernel) is sent; a running UKI that rotted, or grew on the disk,
// is refused with ErrLeftOut, and nothing is staged.
func TestAConfigChangeSendsNoUKI(t *testing.T) {
	f := newFixture(t, slot.Entry{Gen: 1})
	uki := func(id, kernel string) []byte {
		return []byte("MZ stub .cmdline console=ttyS0 " + layout.SlotArg + "=" + id + " .linux " + kernel + strings.Repeat("k", 4000))
	}
	node := []byte("ELF node " + strings.Repeat("n", 5000))
	sign := func(id, config, kernel string) slot.Bundle {
		t.Helper()
		files := map[string][]byte{
			slot.FileUKI:        uki(id, kernel),
			slot.FileNode:       node,
			slot.FileConfig:     []byte(`{"ignition":{"version":"3.4.0"},"tag":"` + config + `"}`),
			slot.FileSigningKey: pubPEM(t, f.key),
		}
		b, err := slot.NewBundle(slot.Manifest{Format: slot.Format, ID: id, Cluster: testCluster, Member: testMember, Kernel: "6.1.0", Etcd: "3.7.3"}, files, f.key)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	running := sign(runID, "first", "6.1.0")
	f.writeSlot(f.run, running)
	var rm slot.Manifest
	if err := json.Unmarshal(running.Manifest, &rm); err != nil {
		t.Fatal(err)
	}
	// send returns whether the stream carried the UKI.
	send := func(b slot.Bundle) (sentUKI bool, _ error) {
		t.Helper()
		have, err := slot.Reusable(rm, b)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := b.WriteLeavingOut(&buf, have); err != nil {
			t.Fatal(err)
		}
		sentUKI = bytes.Contains(buf.Bytes(), []byte("MZ stub"))
		_, err = f.install(buf.Bytes())
		return sentUKI, err
	}
	staged := func(id string) []byte {
		for _, n := range f.entryNames() {
			if strings.Contains(n, id) {
				b, _ := os.ReadFile(filepath.Join(f.root, layout.EntryDir, n))
				return b
			}
		}
		return nil
	}

	next := sign("2222222222222222", "rotated", "6.1.0")
	sentUKI, err := send(next)
	if err != nil {
		t.Fatal(err)
	}
	if sentUKI {
		t.Error("a config change sent the UKI")
	}
	if got := staged("2222222222222222"); !bytes.Equal(got, next.Files[slot.FileUKI]) {
		t.Fatalf("the derived UKI is not the new slot's:\n%q", got)
	}

	newKernel := sign("3333333333333333", "rotated", "6.1.1")
	if sentUKI, err := send(newKernel); err != nil || !sentUKI {
		t.Errorf("a new kernel: the UKI sent %v: %v", sentUKI, err)
	}

	// A running UKI longer on the disk than signed is not read past its
	// size (PID 1 holds the copy): it is not derived from.
	entry := filepath.Join(f.root, layout.EntryDir, f.run.Name())
	b, _ := os.ReadFile(entry)
	os.WriteFile(entry, append(bytes.Clone(b), make([]byte, 1<<20)...), 0o600)
	if _, err := send(sign("5555555555555555", "padded", "6.1.0")); err == nil || !strings.Contains(err.Error(), slot.ErrLeftOut) {
		t.Fatalf("a derived UKI from a longer one: %v", err)
	}
	os.WriteFile(entry, b, 0o600)

	// The running UKI rots on the disk: the derived one fails its digest.
	b[len(b)-1] ^= 1
	os.WriteFile(entry, b, 0o600)
	if _, err := send(sign("4444444444444444", "again", "6.1.0")); err == nil || !strings.Contains(err.Error(), slot.ErrLeftOut) {
		t.Fatalf("a derived UKI from a rotten one: %v", err)
	}
	if staged("4444444444444444") != nil {
		t.Error("a refused update left an entry")
	}
}
