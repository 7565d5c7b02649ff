package slots

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"etcdimg/internal/layout"
	"etcdimg/internal/slot"
)

// The tests lay out a directory as the member's ESP: EFI/Linux holds the
// boot entries, etcdimg/ID each slot's files, as image.Boot.Files writes
// them; the running slot is signed with a test image-signing key.

const (
	testCluster = "c0ffee1234"
	testMember  = "etcd-1"
	runID       = "1111111111111111"
)

var testWant = Want{Cluster: testCluster, Member: testMember}

func newKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pubPEM(t testing.TB, k ed25519.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

type fixture struct {
	t    testing.TB
	root string
	key  ed25519.PrivateKey
	run  slot.Entry
}

// newFixture makes an ESP whose running slot runID is run (Gen, tries).
func newFixture(t testing.TB, run slot.Entry) *fixture {
	t.Helper()
	f := &fixture{t: t, root: t.TempDir(), key: newKey(t), run: run}
	for _, d := range []string{layout.EntryDir, layout.SlotsDir, "/EFI/BOOT", layout.LoaderDir} {
		if err := os.MkdirAll(filepath.Join(f.root, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(f.root, "EFI/BOOT/BOOTX64.EFI"), []byte("systemd-boot"), 0o600)
	os.WriteFile(filepath.Join(f.root, layout.LoaderDir, "loader.conf"), []byte(slot.LoaderConf), 0o600)
	run.ID = runID
	f.run = run
	f.writeSlot(run, f.bundle(runID, testCluster, testMember, "running"))
	return f
}

// bundle signs a slot of id with the fixture's key; tag varies its bytes.
func (f *fixture) bundle(id, cluster, member, tag string) slot.Bundle {
	return f.bundleWith(f.key, id, cluster, member, tag)
}

func (f *fixture) bundleWith(key ed25519.PrivateKey, id, cluster, member, tag string) slot.Bundle {
	f.t.Helper()
	files := map[string][]byte{
		slot.FileUKI:        []byte("MZ uki of " + tag + " " + strings.Repeat("u", 3000)),
		slot.FileNode:       []byte("ELF node of " + tag + " " + strings.Repeat("n", 5000)),
		slot.FileConfig:     []byte(`{"ignition":{"version":"3.4.0"},"tag":"` + tag + `"}`),
		slot.FileSigningKey: pubPEM(f.t, f.key),
	}
	b, err := slot.NewBundle(slot.Manifest{Format: slot.Format, ID: id, Cluster: cluster, Member: member, Kernel: "6.1.0", Etcd: "3.7.3"}, files, key)
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

func raw(t testing.TB, b slot.Bundle) []byte {
	t.Helper()
	r, err := b.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// writeSlot writes a slot as the image builder does: its entry and its
// directory.
func (f *fixture) writeSlot(en slot.Entry, b slot.Bundle) {
	f.t.Helper()
	dir := filepath.Join(f.root, layout.SlotsDir, en.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		f.t.Fatal(err)
	}
	for name, data := range b.Files {
		p := filepath.Join(dir, name)
		if name == slot.FileUKI {
			p = filepath.Join(f.root, layout.EntryDir, en.Name())
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			f.t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, layout.SlotManifestFile), b.Manifest, 0o600)
	os.WriteFile(filepath.Join(dir, layout.SlotSignatureFile), b.Signature, 0o600)
}

func (f *fixture) esp() ESP { return ESP{Root: f.root, Running: runID} }

func (f *fixture) install(b []byte) (slot.Manifest, error) {
	return f.esp().Install(bytes.NewReader(b), testWant, 3, MaxSlot)
}

// tree is every file under root: its path and SHA-256.
func tree(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			out[rel+"/"] = "dir"
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		out[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// runningFiles is the running slot's part of tree: its entry and its
// directory.
func (f *fixture) runningFiles() map[string]string {
	out := map[string]string{}
	for p, sum := range tree(f.t, f.root) {
		if strings.Contains(p, runID) {
			out[p] = sum
		}
	}
	return out
}

func (f *fixture) entryNames() []string {
	f.t.Helper()
	des, err := os.ReadDir(filepath.Join(f.root, layout.EntryDir))
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

// efiEntries are the names systemd-boot loads from EFI/Linux: *.efi,
// in any case.
func efiEntries(t testing.TB, root string) []string {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(root, layout.EntryDir))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		if strings.HasSuffix(strings.ToLower(de.Name()), ".efi") && de.Type().IsRegular() {
			out = append(out, de.Name())
		}
	}
	return out
}

// ---- systemd-boot 252, as far as the slots depend on it ----

// sdTries parses a boot-counting suffix as systemd-boot's
// config_entry_parse_tries does: NAME+LEFT[-DONE].efi; left is -1 when
// the name does not count.
func sdTries(name string) (left, done int) {
	base := strings.TrimSuffix(strings.ToLower(name), ".efi")
	i := strings.LastIndexByte(base, '+')
	if i < 0 {
		return -1, -1
	}
	l, d, hasDone := strings.Cut(base[i+1:], "-")
	n, err := strconv.Atoi(l)
	if err != nil || n < 0 || strings.Trim(l, "0123456789") != "" {
		return -1, -1
	}
	if !hasDone {
		return n, 0
	}
	m, err := strconv.Atoi(d)
	if err != nil || strings.Trim(d, "0123456789") != "" {
		return -1, -1
	}
	return n, m
}

// strverscmpImproved is systemd's strverscmp_improved (src/fundamental/
// string-util-fundamental.c), which systemd-boot orders entries' IDs by.
func strverscmpImproved(a, b string) int {
	valid := func(c byte) bool {
		return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.IndexByte("~-^.", c) >= 0
	}
	at := func(s string, i int) byte {
		if i < len(s) {
			return s[i]
		}
		return 0
	}
	cmp := func(x, y bool) int {
		switch {
		case x == y:
			return 0
		case x:
			return 1
		}
		return -1
	}
	digit := func(c byte) bool { return c >= '0' && c <= '9' }
	alpha := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	i, j := 0, 0
	for {
		for at(a, i) != 0 && !valid(at(a, i)) {
			i++
		}
		for at(b, j) != 0 && !valid(at(b, j)) {
			j++
		}
		if at(a, i) == '~' || at(b, j) == '~' {
			if r := cmp(at(a, i) != '~', at(b, j) != '~'); r != 0 {
				return r
			}
			i, j = i+1, j+1
			continue
		}
		if at(a, i) == 0 || at(b, j) == 0 {
			return int(at(a, i)) - int(at(b, j))
		}
		if at(a, i) == '-' || at(b, j) == '-' {
			if r := cmp(at(a, i) != '-', at(b, j) != '-'); r != 0 {
				return r
			}
			i, j = i+1, j+1
		}
		if at(a, i) == '^' || at(b, j) == '^' {
			if at(a, i) == 0 {
				return -1
			}
			if at(b, j) == 0 {
				return 1
			}
			if r := cmp(at(a, i) != '^', at(b, j) != '^'); r != 0 {
				return -r
			}
			i, j = i+1, j+1
		}
		if at(a, i) == '.' || at(b, j) == '.' {
			if r := cmp(at(a, i) != '.', at(b, j) != '.'); r != 0 {
				return r
			}
			i, j = i+1, j+1
		}
		var ii, jj int
		if digit(at(a, i)) || digit(at(b, j)) {
			for ii = i; digit(at(a, ii)); ii++ {
			}
			for jj = j; digit(at(b, jj)); jj++ {
			}
			if r := cmp(i != ii, j != jj); r != 0 {
				return r
			}
			for at(a, i) == '0' {
				i++
			}
			for at(b, j) == '0' {
				j++
			}
			if r := (ii - i) - (jj - j); r != 0 {
				return r
			}
			if r := strings.Compare(a[i:ii], b[j:jj]); r != 0 {
				return r
			}
		} else {
			for ii = i; alpha(at(a, ii)); ii++ {
			}
			for jj = j; alpha(at(b, jj)); jj++ {
			}
			n := min(ii-i, jj-j)
			if r := strings.Compare(a[i:i+n], b[j:j+n]); r != 0 {
				return r
			}
			if r := (ii - i) - (jj - j); r != 0 {
				return r
			}
		}
		i, j = ii, jj
	}
}

// sdOrder sorts entry file names as systemd-boot 252 does for our UKIs
// (same sort key, no version): spent entries last, then the lower-cased
// IDs compared as versions, highest first.
func sdOrder(names []string) []string {
	out := slices.Clone(names)
	slices.SortStableFunc(out, func(a, b string) int {
		la, _ := sdTries(a)
		lb, _ := sdTries(b)
		if (la == 0) != (lb == 0) {
			if la == 0 {
				return 1
			}
			return -1
		}
		return -strverscmpImproved(strings.ToLower(a), strings.ToLower(b))
	})
	return out
}

// sdPick is the entry `default etcdimg-*` boots, or "".
func sdPick(t testing.TB, root string) string {
	for _, n := range sdOrder(efiEntries(t, root)) {
		if ok, _ := filepath.Match("etcdimg-*", strings.ToLower(n)); ok {
			return n
		}
	}
	return ""
}

// slotOf is the slot ID an entry name boots (its UKI's command line).
func slotOf(name string) string {
	if e, ok := slot.ParseEntry(name); ok {
		return e.ID
	}
	// A name ParseEntry cannot read: take the ID out by position.
	parts := strings.SplitN(strings.ToLower(name), "-", 3)
	if len(parts) == 3 && len(parts[2]) >= 16 {
		return parts[2][:16]
	}
	return ""
}

// sound reports whether a boot of slot id gets to PID 1's slot check:
// the directory preinit binds has the node binary, firstboot's config
// and the slot's manifest and key.
func sound(root, id string) bool {
	for _, n := range []string{slot.FileNode, slot.FileConfig, layout.SlotManifestFile, slot.FileSigningKey} {
		if _, err := os.Stat(filepath.Join(root, layout.SlotsDir, id, n)); err != nil {
			return false
		}
	}
	return true
}

// sdBoot is one power-on: systemd-boot picks an entry and, when it
// counts, takes a try by renaming it before it boots it. It returns the
// slot that boots.
func sdBoot(t testing.TB, root string) string {
	t.Helper()
	name := sdPick(t, root)
	if name == "" {
		t.Fatalf("systemd-boot finds nothing to boot in %v", efiEntries(t, root))
	}
	if left, done := sdTries(name); left > 0 {
		base := strings.TrimSuffix(name, name[strings.LastIndexByte(name, '+'):])
		next := fmt.Sprintf("%s+%d-%d.efi", base, left-1, done+1)
		if err := os.Rename(filepath.Join(root, layout.EntryDir, name), filepath.Join(root, layout.EntryDir, next)); err != nil {
			t.Fatal(err)
		}
	}
	return slotOf(name)
}

// bootUntilUp powers the machine on until a slot boots that gets as far
// as PID 1 (a slot that does not reboots: preinit's onTrial, or a kernel
// panic with panic=-1), and returns it.
func bootUntilUp(t testing.TB, root string) string {
	t.Helper()
	for i := 0; i < 30; i++ {
		id := sdBoot(t, root)
		if sound(root, id) {
			return id
		}
	}
	t.Fatalf("no slot gets to PID 1 in 30 boots: %v", efiEntries(t, root))
	return ""
}

func TestSystemdBootOrderModel(t *testing.T) {
	a, b := "0123456789abcdef", "fedcba9876543210"
	for _, c := range []struct {
		names []string
		first string
	}{
		{[]string{"etcdimg-1-" + a + ".efi", "etcdimg-2-" + b + "+3.efi"}, "etcdimg-2-" + b + "+3.efi"},
		{[]string{"etcdimg-9-" + a + ".efi", "etcdimg-10-" + b + "+3.efi"}, "etcdimg-10-" + b + "+3.efi"},
		{[]string{"etcdimg-99-" + a + ".efi", "etcdimg-100-" + b + ".efi"}, "etcdimg-100-" + b + ".efi"},
		{[]string{"etcdimg-1-" + a + ".efi", "etcdimg-2-" + b + "+0-3.efi"}, "etcdimg-1-" + a + ".efi"},
		{[]string{"ETCDIMG-1-" + strings.ToUpper(a) + ".EFI", "etcdimg-2-" + b + "+1-2.efi"}, "etcdimg-2-" + b + "+1-2.efi"},
		{[]string{"etcdimg-2-" + b + "+0-3.efi"}, "etcdimg-2-" + b + "+0-3.efi"},
		{[]string{"etcdimg-2-" + a + "+2-1.efi", "etcdimg-2-" + a + ".efi"}, "etcdimg-2-" + a + "+2-1.efi"},
	} {
		if got := sdOrder(c.names)[0]; got != c.first {
			t.Errorf("%v: systemd-boot boots %s, want %s", c.names, got, c.first)
		}
	}
}

// ---- Install ----

func TestInstallStagesANewGenerationAndLeavesTheRunningSlotAlone(t *testing.T) {
	for _, run := range []slot.Entry{{Gen: 1}, {Gen: 9}, {Gen: 41}} {
		t.Run(fmt.Sprint("gen", run.Gen), func(t *testing.T) {
			f := newFixture(t, run)
			before := f.runningFiles()
			b := f.bundle("2222222222222222", testCluster, testMember, "next")
			m, err := f.install(raw(t, b))
			if err != nil {
				t.Fatal(err)
			}
			if m.ID != "2222222222222222" {
				t.Fatalf("manifest %+v", m)
			}
			want := slot.Entry{Gen: run.Gen + 1, ID: m.ID, Counting: true, TriesLeft: 3}.Name()
			if got := f.entryNames(); len(got) != 2 || !slices.Contains(got, want) || !slices.Contains(got, f.run.Name()) {
				t.Fatalf("entries %v, want %s and %s", got, f.run.Name(), want)
			}
			uki, _ := os.ReadFile(filepath.Join(f.root, layout.EntryDir, want))
			if !bytes.Equal(uki, b.Files[slot.FileUKI]) {
				t.Fatal("the new entry is not the bundle's UKI")
			}
			dir := filepath.Join(f.root, layout.SlotsDir, m.ID)
			for _, n := range []string{slot.FileNode, slot.FileConfig, slot.FileSigningKey} {
				got, err := os.ReadFile(filepath.Join(dir, n))
				if err != nil || !bytes.Equal(got, b.Files[n]) {
					t.Fatalf("%s: %v", n, err)
				}
			}
			if got, _ := os.ReadFile(filepath.Join(dir, layout.SlotManifestFile)); !bytes.Equal(got, b.Manifest) {
				t.Fatal("the slot's manifest is not the signed one")
			}
			if after := f.runningFiles(); !mapsEqual(before, after) {
				t.Fatalf("the running slot changed:\nbefore %v\nafter  %v", before, after)
			}
			for p := range tree(t, f.root) {
				if strings.Contains(p, ".tmp") {
					t.Errorf("left behind: %s", p)
				}
			}
			st, err := f.esp().Status()
			if err != nil || st.Other == nil || st.Other.State != slot.StateStaged || st.Other.ID != m.ID || st.RolledBack != nil {
				t.Fatalf("status %+v %v", st, err)
			}
			if got := sdPick(t, f.root); got != want {
				t.Fatalf("systemd-boot boots %s next, want %s", got, want)
			}
			// It boots the new slot; a trial that fails three times falls
			// back to the running slot, which reports the rollback.
			if id := sdBoot(t, f.root); id != m.ID {
				t.Fatalf("first boot: %s", id)
			}
			if st, err := (ESP{Root: f.root, Running: m.ID}).Status(); err != nil || st.Running.State != slot.StateTrial || st.Running.TriesDone != 1 || st.Running.TriesLeft != 2 {
				t.Fatalf("on trial: %+v %v", st, err)
			}
			if err := (ESP{Root: f.root, Running: m.ID}).RecordTrial("etcd never caught up"); err != nil {
				t.Fatal(err)
			}
			sdBoot(t, f.root)
			sdBoot(t, f.root)
			if id := sdBoot(t, f.root); id != runID {
				t.Fatalf("after three failed tries systemd-boot boots %s, want the old slot %s", id, runID)
			}
			st, err = f.esp().Status()
			if err != nil || st.RolledBack == nil || st.RolledBack.ID != m.ID || st.RolledBack.Trial != "etcd never caught up" || st.RolledBack.TriesDone != 3 {
				t.Fatalf("after the rollback: %+v %v", st, err)
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// signedRaw signs a manifest as given (no Check) and wraps it with files
// in a tar stream as a bundle would be: what a holder of the key, or a
// bug in the builder, could send.
func signedRaw(t testing.TB, key ed25519.PrivateKey, manifest []byte, files []tarFile) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	put := func(f tarFile) {
		typ := f.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{Name: f.name, Mode: 0o600, Size: int64(len(f.data)), Typeflag: typ, Linkname: f.link}
		if typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			tw.Write(f.data)
		}
	}
	put(tarFile{name: "slot.json", data: manifest})
	put(tarFile{name: "slot.sig", data: ed25519.Sign(key, manifest)})
	for _, f := range files {
		put(f)
	}
	tw.Close()
	return buf.Bytes()
}

type tarFile struct {
	name string
	data []byte
	typ  byte
	link string
}

func TestInstallRefusals(t *testing.T) {
	newID := "3333333333333333"
	cases := []struct {
		name string
		run  slot.Entry // the running slot's entry (its ID is runID)
		make func(f *fixture) []byte
		// limit bounds the slot, 0 for MaxSlot
		limit int64
		is    error
		say   string
	}{
		{name: "foreign key", make: func(f *fixture) []byte {
			return raw(t, f.bundleWith(newKey(t), newID, testCluster, testMember, "x"))
		}, say: "signature"},
		{name: "flipped byte in the manifest", make: func(f *fixture) []byte {
			b := f.bundle(newID, testCluster, testMember, "x")
			b.Manifest = bytes.Replace(b.Manifest, []byte("3.7.3"), []byte("3.7.4"), 1)
			return raw(t, b)
		}, say: "signature"},
		{name: "flipped byte in the node binary", make: func(f *fixture) []byte {
			b := f.bundle(newID, testCluster, testMember, "x")
			node := bytes.Clone(b.Files[slot.FileNode])
			node[len(node)/2] ^= 1
			b.Files[slot.FileNode] = node
			return raw(t, b)
		}, say: "SHA-256"},
		{name: "flipped byte in the UKI", make: func(f *fixture) []byte {
			b := f.bundle(newID, testCluster, testMember, "x")
			uki := bytes.Clone(b.Files[slot.FileUKI])
			uki[0] ^= 1
			b.Files[slot.FileUKI] = uki
			return raw(t, b)
		}, say: "SHA-256"},
		{name: "a file missing", make: func(f *fixture) []byte {
			b := f.bundle(newID, testCluster, testMember, "x")
			delete(b.Files, slot.FileUKI)
			return raw(t, b)
		}, say: "missing"},
		{name: "another cluster", make: func(f *fixture) []byte {
			return raw(t, f.bundle(newID, "deadbeef", testMember, "x"))
		}, say: "cluster"},
		{name: "another member", make: func(f *fixture) []byte {
			return raw(t, f.bundle(newID, testCluster, "etcd-2", "x"))
		}, say: "etcd-2"},
		{name: "a generic image's slot", make: func(f *fixture) []byte {
			return raw(t, f.bundle(newID, "", "", "x"))
		}, say: "cluster"},
		{name: "the running slot", make: func(f *fixture) []byte {
			return raw(t, f.bundle(runID, testCluster, testMember, "x"))
		}, is: ErrRunning},
		{name: "while the running slot is on trial", run: slot.Entry{Gen: 2, Counting: true, TriesLeft: 2, TriesDone: 1}, make: func(f *fixture) []byte {
			return raw(t, f.bundle(newID, testCluster, testMember, "x"))
		}, say: "on trial"},
		{name: "too large", limit: 4096, make: func(f *fixture) []byte {
			return raw(t, f.bundle(newID, testCluster, testMember, "x"))
		}, say: "more than"},
		{name: "not a bundle", make: func(f *fixture) []byte { return []byte("GET / HTTP/1.1\r\n\r\n") }},
		{name: "a huge manifest before its signature", make: func(f *fixture) []byte {
			return signedRaw(t, f.key, bytes.Repeat([]byte(" "), 1<<20), nil)
		}, say: "not an etcdimg update"},
		{name: "an ID that is a path, signed", make: func(f *fixture) []byte {
			m := fmt.Sprintf(`{"format":1,"id":"../../../../escape","cluster":%q,"member":%q,"kernel":"6.1","files":[]}`, testCluster, testMember)
			return signedRaw(t, f.key, []byte(m), nil)
		}, say: "16 hex"},
		{name: "a file name that is a path, signed", make: func(f *fixture) []byte {
			sum := sha256.Sum256([]byte("x"))
			m := fmt.Sprintf(`{"format":1,"id":%q,"cluster":%q,"member":%q,"kernel":"6.1","files":[{"name":"../../escape","size":1,"sha256":%q}]}`, newID, testCluster, testMember, hex.EncodeToString(sum[:]))
			return signedRaw(t, f.key, []byte(m), []tarFile{{name: "../../escape", data: []byte("x")}})
		}, say: "unknown file"},
		{name: "a tar entry outside the manifest", make: func(f *fixture) []byte {
			b := f.bundle(newID, testCluster, testMember, "x")
			files := []tarFile{}
			for _, n := range slot.Files {
				files = append(files, tarFile{name: n, data: b.Files[n]})
			}
			files = append([]tarFile{{name: "../../../escape", data: []byte("owned")}}, files...)
			return signedRaw(t, f.key, b.Manifest, files)
		}, say: "manifest names"},
		{name: "a symlink for the node binary", make: func(f *fixture) []byte {
			b := f.bundle(newID, testCluster, testMember, "x")
			files := []tarFile{{name: slot.FileSigningKey, data: b.Files[slot.FileSigningKey]}, {name: slot.FileConfig, data: b.Files[slot.FileConfig]}, {name: slot.FileNode, typ: tar.TypeSymlink, link: "/etc/shadow"}}
			return signedRaw(t, f.key, b.Manifest, files)
		}, say: "manifest names"},
		{name: "a file twice", make: func(f *fixture) []byte {
			b := f.bundle(newID, testCluster, testMember, "x")
			files := []tarFile{{name: slot.FileNode, data: b.Files[slot.FileNode]}, {name: slot.FileNode, data: b.Files[slot.FileNode]}}
			return signedRaw(t, f.key, b.Manifest, files)
		}, say: "manifest names"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			run := c.run
			if run.Gen == 0 {
				run.Gen = 1
			}
			f := newFixture(t, run)
			before := f.runningFiles()
			outside := tree(t, filepath.Dir(f.root))
			limit := c.limit
			if limit == 0 {
				limit = MaxSlot
			}
			_, err := f.esp().Install(bytes.NewReader(c.make(f)), testWant, 3, limit)
			switch {
			case err == nil:
				t.Fatal("installed")
			case c.is != nil && !errors.Is(err, c.is):
				t.Fatalf("error %v, want %v", err, c.is)
			case c.say != "" && !strings.Contains(err.Error(), c.say):
				t.Fatalf("error %q does not say %q", err, c.say)
			}
			if after := f.runningFiles(); !mapsEqual(before, after) {
				t.Fatalf("the running slot changed")
			}
			if got := efiEntries(t, f.root); len(got) != 1 || got[0] != f.run.Name() {
				t.Fatalf("entries after a refusal: %v", got)
			}
			if after := tree(t, filepath.Dir(f.root)); !mapsEqual(outside, after) {
				for p := range after {
					if _, ok := outside[p]; !ok {
						t.Errorf("written: %s", p)
					}
				}
				t.Fatal("a refused update left files on the ESP or beside it")
			}
			if got := sdBoot(t, f.root); got != runID {
				t.Fatalf("systemd-boot boots %s after the refusal", got)
			}
		})
	}
}

// A staged slot never booted, a slot whose tries are spent, an older
// good slot, and what an interrupted install left: a second install
// replaces each, and nothing but the running slot and the new one stays.
func TestInstallReplacesTheInactiveSlot(t *testing.T) {
	const other = "4444444444444444"
	for _, c := range []struct {
		name  string
		run   slot.Entry
		other slot.Entry
		junk  bool
	}{
		{name: "staged, never booted", run: slot.Entry{Gen: 1}, other: slot.Entry{Gen: 2, Counting: true, TriesLeft: 3}},
		{name: "rolled back", run: slot.Entry{Gen: 1}, other: slot.Entry{Gen: 2, Counting: true, TriesLeft: 0, TriesDone: 3}},
		{name: "older and good", run: slot.Entry{Gen: 2}, other: slot.Entry{Gen: 1}},
		{name: "newer and good (booted from the menu)", run: slot.Entry{Gen: 1}, other: slot.Entry{Gen: 2}},
		{name: "leftovers of an interrupted install", run: slot.Entry{Gen: 5}, junk: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, c.run)
			if c.other.Gen != 0 {
				c.other.ID = other
				f.writeSlot(c.other, f.bundle(other, testCluster, testMember, "other"))
				os.WriteFile(filepath.Join(f.root, layout.SlotsDir, other, layout.SlotTrialFile), []byte("it failed\n"), 0o600)
			}
			if c.junk {
				os.MkdirAll(filepath.Join(f.root, layout.SlotsDir, other+".tmp"), 0o700)
				os.WriteFile(filepath.Join(f.root, layout.SlotsDir, other+".tmp", slot.FileNode), []byte("half"), 0o600)
				os.WriteFile(filepath.Join(f.root, layout.EntryDir, "etcdimg-6-"+other+"+3.efi.tmp"), []byte("MZ half"), 0o600)
			}
			before := f.runningFiles()
			const next = "5555555555555555"
			if _, err := f.install(raw(t, f.bundle(next, testCluster, testMember, "next"))); err != nil {
				t.Fatal(err)
			}
			want := []string{f.run.Name(), slot.Entry{Gen: c.run.Gen + 1, ID: next, Counting: true, TriesLeft: 3}.Name()}
			if got := f.entryNames(); len(got) != 2 || !slices.Contains(got, want[0]) || !slices.Contains(got, want[1]) {
				t.Fatalf("entries %v, want %v", got, want)
			}
			dirs, _ := os.ReadDir(filepath.Join(f.root, layout.SlotsDir))
			var names []string
			for _, d := range dirs {
				names = append(names, d.Name())
			}
			if slices.Sort(names); !slices.Equal(names, []string{runID, next}) {
				t.Fatalf("slot directories %v", names)
			}
			if !mapsEqual(before, f.runningFiles()) {
				t.Fatal("the running slot changed")
			}
			if got := sdPick(t, f.root); got != want[1] {
				t.Fatalf("systemd-boot boots %s, want %s", got, want[1])
			}
		})
	}
}

// failAfter reads r and fails after n bytes, as a connection that drops.
type failAfter struct {
	r io.Reader
	n int
}

func (f *failAfter) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("connection reset by peer")
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

func TestInstallInterruptedMidStream(t *testing.T) {
	f := newFixture(t, slot.Entry{Gen: 1})
	const next = "6666666666666666"
	b := raw(t, f.bundle(next, testCluster, testMember, "next"))
	before := f.runningFiles()
	for n := 0; n < len(b); n += len(b)/37 + 1 {
		_, err := f.esp().Install(&failAfter{r: bytes.NewReader(b), n: n}, testWant, 3, MaxSlot)
		if err == nil {
			t.Fatalf("cut after %d of %d bytes: installed", n, len(b))
		}
		if got := efiEntries(t, f.root); len(got) != 1 || got[0] != f.run.Name() {
			t.Fatalf("cut after %d bytes: entries %v", n, got)
		}
		for p := range tree(t, f.root) {
			if strings.Contains(p, next) {
				t.Fatalf("cut after %d bytes: %s left behind", n, p)
			}
		}
		if !mapsEqual(before, f.runningFiles()) {
			t.Fatalf("cut after %d bytes: the running slot changed", n)
		}
		if got := sdPick(t, f.root); got != f.run.Name() {
			t.Fatalf("cut after %d bytes: systemd-boot boots %s", n, got)
		}
	}
	if _, err := f.install(b); err != nil {
		t.Fatalf("the whole bundle after the cut ones: %v", err)
	}
	if got := sdPick(t, f.root); !strings.Contains(got, next) {
		t.Fatalf("systemd-boot boots %s", got)
	}
}

// Install's steps cannot be stopped from a test, so each power-cut point
// is made from a finished install by undoing its last steps, on FAT's
// terms too (a rename that lands twice, or not at all, and the entry's
// rename reaching the disk before the directory's). From each, the
// member must boot a slot that works (the running one, or the new one
// complete), report where it stands, and take the next install.
func TestInstallPowerCutPoints(t *testing.T) {
	const next = "7777777777777777"
	entry := slot.Entry{Gen: 2, ID: next, Counting: true, TriesLeft: 3}.Name()
	linux := func(root, n string) string { return filepath.Join(root, layout.EntryDir, n) }
	sdir := func(root, id string) string { return filepath.Join(root, layout.SlotsDir, id) }
	must := func(t *testing.T, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	cp := func(t *testing.T, from, to string) {
		t.Helper()
		must(t, os.CopyFS(to, os.DirFS(from)))
	}
	for _, c := range []struct {
		name string
		cut  func(t *testing.T, root string)
		// boots is the slot that comes up.
		boots string
		// rolledBack: the running slot reports the new one as rolled back.
		rolledBack bool
	}{
		{name: "committed", cut: func(t *testing.T, root string) {}, boots: next},
		{name: "entry rename not landed", cut: func(t *testing.T, root string) {
			must(t, os.Rename(linux(root, entry), linux(root, entry+".tmp")))
		}, boots: runID},
		{name: "entry rename landed twice", cut: func(t *testing.T, root string) {
			b, _ := os.ReadFile(linux(root, entry))
			must(t, os.WriteFile(linux(root, entry+".tmp"), b, 0o600))
		}, boots: next},
		{name: "entry rename lost both names", cut: func(t *testing.T, root string) {
			must(t, os.Remove(linux(root, entry)))
		}, boots: runID},
		{name: "directory rename not landed", cut: func(t *testing.T, root string) {
			must(t, os.Rename(linux(root, entry), linux(root, entry+".tmp")))
			must(t, os.Rename(sdir(root, next), sdir(root, next+".tmp")))
		}, boots: runID},
		{name: "directory rename landed twice", cut: func(t *testing.T, root string) {
			must(t, os.Rename(linux(root, entry), linux(root, entry+".tmp")))
			cp(t, sdir(root, next), sdir(root, next+".tmp"))
		}, boots: runID},
		{name: "directory rename lost both names", cut: func(t *testing.T, root string) {
			must(t, os.Rename(linux(root, entry), linux(root, entry+".tmp")))
			must(t, os.RemoveAll(sdir(root, next)))
		}, boots: runID},
		{name: "files half written", cut: func(t *testing.T, root string) {
			must(t, os.Rename(linux(root, entry), linux(root, entry+".tmp")))
			must(t, os.Truncate(linux(root, entry+".tmp"), 100))
			must(t, os.Rename(sdir(root, next), sdir(root, next+".tmp")))
			must(t, os.Remove(filepath.Join(sdir(root, next+".tmp"), layout.SlotManifestFile)))
			must(t, os.Truncate(filepath.Join(sdir(root, next+".tmp"), slot.FileNode), 10))
		}, boots: runID},
		{name: "entry landed before the directory (no ordering)", cut: func(t *testing.T, root string) {
			must(t, os.Rename(sdir(root, next), sdir(root, next+".tmp")))
		}, boots: runID, rolledBack: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, slot.Entry{Gen: 1})
			if _, err := f.install(raw(t, f.bundle(next, testCluster, testMember, "next"))); err != nil {
				t.Fatal(err)
			}
			before := f.runningFiles()
			c.cut(t, f.root)
			if !mapsEqual(before, f.runningFiles()) {
				t.Fatal("test setup touched the running slot")
			}
			got := bootUntilUp(t, f.root)
			if got != c.boots {
				t.Fatalf("the member comes up on %s, want %s (entries %v)", got, c.boots, efiEntries(t, f.root))
			}
			st, err := ESP{Root: f.root, Running: got}.Status()
			if err != nil {
				t.Fatalf("status on %s: %v", got, err)
			}
			if c.rolledBack != (st.RolledBack != nil) {
				t.Errorf("rolled back %+v", st.RolledBack)
			}
			if got != runID {
				return
			}
			// The next install clears what the cut left and succeeds.
			const again = "8888888888888888"
			if _, err := f.install(raw(t, f.bundle(again, testCluster, testMember, "again"))); err != nil {
				t.Fatalf("the next install: %v", err)
			}
			for p := range tree(t, f.root) {
				if strings.Contains(p, next) {
					t.Errorf("still there after the next install: %s", p)
				}
			}
			if pick := sdPick(t, f.root); !strings.Contains(pick, again) {
				t.Fatalf("systemd-boot boots %s", pick)
			}
		})
	}
}

// systemd-boot counts with one digit or more; an entry name the node
// cannot read back is a slot it does not know it runs.
func TestInstallOnlyWritesTriesItCanReadBack(t *testing.T) {
	for _, tries := range []int{0, 10, -1} {
		t.Run(strconv.Itoa(tries), func(t *testing.T) {
			f := newFixture(t, slot.Entry{Gen: 1})
			const next = "9999999999999999"
			_, err := f.esp().Install(bytes.NewReader(raw(t, f.bundle(next, testCluster, testMember, "n"))), testWant, tries, MaxSlot)
			if err != nil {
				return // refused: fine
			}
			names := efiEntries(t, f.root)
			for _, n := range names {
				if !strings.Contains(n, next) {
					continue
				}
				e, ok := slot.ParseEntry(n)
				if !ok {
					t.Fatalf("tries %d: installed %s, a name ParseEntry cannot read: booted, the node finds no entry for its slot and stops", tries, n)
				}
				if e.Spent() {
					t.Fatalf("tries %d: installed %s, spent before its first boot: never booted, yet reported as rolled back", tries, n)
				}
			}
		})
	}
}

// ---- MarkGood, RecordTrial, Status ----

func TestMarkGood(t *testing.T) {
	for _, c := range []struct {
		run     slot.Entry
		changed bool
	}{
		{slot.Entry{Gen: 2, Counting: true, TriesLeft: 2, TriesDone: 1}, true},
		{slot.Entry{Gen: 2, Counting: true, TriesLeft: 0, TriesDone: 3}, true},
		{slot.Entry{Gen: 10, Counting: true, TriesLeft: 8, TriesDone: 1}, true},
		{slot.Entry{Gen: 2}, false},
	} {
		t.Run(c.run.Name(), func(t *testing.T) {
			f := newFixture(t, c.run)
			os.WriteFile(filepath.Join(f.root, layout.SlotsDir, runID, layout.SlotTrialFile), []byte("earlier try failed\n"), 0o600)
			uki, _ := os.ReadFile(filepath.Join(f.root, layout.EntryDir, f.run.Name()))
			changed, err := f.esp().MarkGood()
			if err != nil || changed != c.changed {
				t.Fatalf("MarkGood: %v %v", changed, err)
			}
			good := slot.Entry{Gen: c.run.Gen, ID: runID}.Name()
			if got := efiEntries(t, f.root); len(got) != 1 || got[0] != good {
				t.Fatalf("entries %v, want %s", got, good)
			}
			if b, _ := os.ReadFile(filepath.Join(f.root, layout.EntryDir, good)); !bytes.Equal(b, uki) {
				t.Fatal("the UKI changed")
			}
			_, err = os.Stat(filepath.Join(f.root, layout.SlotsDir, runID, layout.SlotTrialFile))
			if c.changed != errors.Is(err, os.ErrNotExist) {
				t.Fatalf("trial.txt after MarkGood: %v", err)
			}
			st, err := f.esp().Status()
			if err != nil || st.Running.State != slot.StateGood {
				t.Fatalf("%+v %v", st, err)
			}
		})
	}
}

// A power cut in MarkGood's rename on FAT can leave both names. On the
// last try the counting name is spent (+0-3), so systemd-boot boots the
// good name; the member must still end with one good entry and take the
// next update.
func TestMarkGoodAfterARenameThatLandedTwice(t *testing.T) {
	f := newFixture(t, slot.Entry{Gen: 2, Counting: true, TriesLeft: 0, TriesDone: 3})
	good := slot.Entry{Gen: 2, ID: runID}.Name()
	b, _ := os.ReadFile(filepath.Join(f.root, layout.EntryDir, f.run.Name()))
	os.WriteFile(filepath.Join(f.root, layout.EntryDir, good), b, 0o600)
	if pick := sdPick(t, f.root); pick != good {
		t.Fatalf("systemd-boot boots %s", pick)
	}
	st, err := f.esp().Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Running.State == slot.StateTrial {
		if _, err := f.esp().MarkGood(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.install(raw(t, f.bundle("2222222222222222", testCluster, testMember, "n"))); err != nil {
		t.Fatalf("running state %q; the next update: %v", st.Running.State, err)
	}
}

// systemd-boot takes the try before it boots: the last try runs as
// NAME+0-N.efi. That boot is still a trial: PID 1 must watch it and mark
// it good, and a boot that stops must reboot (into the old slot), not
// wait for the power button. With tries 1 it is the only try.
func TestTheLastTryIsStillATrial(t *testing.T) {
	for _, tries := range []int{1, 3} {
		t.Run(strconv.Itoa(tries), func(t *testing.T) {
			f := newFixture(t, slot.Entry{Gen: 1})
			const next = "2222222222222222"
			if _, err := f.esp().Install(bytes.NewReader(raw(t, f.bundle(next, testCluster, testMember, "n"))), testWant, tries, MaxSlot); err != nil {
				t.Fatal(err)
			}
			for i := 1; i <= tries; i++ {
				if id := sdBoot(t, f.root); id != next {
					t.Fatalf("boot %d: %s", i, id)
				}
				st, err := ESP{Root: f.root, Running: next}.Status()
				if err != nil {
					t.Fatal(err)
				}
				// firstboot.checkSlot: trial = Running.State == trial.
				if st.Running.State != slot.StateTrial {
					t.Fatalf("try %d of %d (entry %v): the running slot is %q, not %q: PID 1 never runs the gate, never marks it good, and a stopped boot waits for power-off instead of rebooting", i, tries, efiEntries(t, f.root), st.Running.State, slot.StateTrial)
				}
			}
			if _, err := (ESP{Root: f.root, Running: next}).MarkGood(); err != nil {
				t.Fatal(err)
			}
			if id := sdBoot(t, f.root); id != next {
				t.Fatalf("after the last try was marked good systemd-boot boots %s", id)
			}
		})
	}
}

func TestRecordTrialThenRollbackIsReported(t *testing.T) {
	f := newFixture(t, slot.Entry{Gen: 1})
	const next = "abababababababab"
	if _, err := f.install(raw(t, f.bundle(next, testCluster, testMember, "n"))); err != nil {
		t.Fatal(err)
	}
	reasons := []string{"first", "second", "third"}
	for _, r := range reasons {
		if id := sdBoot(t, f.root); id != next {
			t.Fatalf("boot %s: %s", r, id)
		}
		if err := (ESP{Root: f.root, Running: next}).RecordTrial("try " + r); err != nil {
			t.Fatal(err)
		}
	}
	if id := sdBoot(t, f.root); id != runID {
		t.Fatalf("after the tries: %s", id)
	}
	st, err := f.esp().Status()
	if err != nil || st.RolledBack == nil || st.RolledBack.Trial != "try third" || st.RolledBack.State != slot.StateBad {
		t.Fatalf("%+v %v", st, err)
	}
	// Still reported on the boots after, until the next install.
	if id := sdBoot(t, f.root); id != runID {
		t.Fatal(id)
	}
	if st, _ := f.esp().Status(); st.RolledBack == nil {
		t.Fatal("the rollback is forgotten after one more boot")
	}
}

func TestStatus(t *testing.T) {
	const other = "cdcdcdcdcdcdcdcd"
	for _, c := range []struct {
		name       string
		run        slot.Entry
		other      *slot.Entry
		trialFile  string
		running    string
		otherState string
		rolledBack bool
	}{
		{name: "good only", run: slot.Entry{Gen: 1}, running: slot.StateGood},
		{name: "staged", run: slot.Entry{Gen: 1}, other: &slot.Entry{Gen: 2, Counting: true, TriesLeft: 3}, running: slot.StateGood, otherState: slot.StateStaged},
		{name: "trial", run: slot.Entry{Gen: 2, Counting: true, TriesLeft: 2, TriesDone: 1}, other: &slot.Entry{Gen: 1}, running: slot.StateTrial, otherState: slot.StateGood},
		{name: "rolled back", run: slot.Entry{Gen: 1}, other: &slot.Entry{Gen: 2, Counting: true, TriesDone: 3}, trialFile: "2026-12-07T05:00:00Z not a caught-up voter", running: slot.StateGood, otherState: slot.StateBad, rolledBack: true},
		{name: "upgraded, old kept", run: slot.Entry{Gen: 2}, other: &slot.Entry{Gen: 1}, running: slot.StateGood, otherState: slot.StateGood},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, c.run)
			if c.other != nil {
				c.other.ID = other
				f.writeSlot(*c.other, f.bundle(other, testCluster, testMember, "other"))
				if c.trialFile != "" {
					os.WriteFile(filepath.Join(f.root, layout.SlotsDir, other, layout.SlotTrialFile), []byte(c.trialFile+"\n"), 0o600)
				}
			}
			st, err := f.esp().Status()
			if err != nil {
				t.Fatal(err)
			}
			if st.Member != testMember || st.Running.ID != runID || st.Running.State != c.running || st.Running.Manifest == nil || st.Running.Digest == "" {
				t.Fatalf("running %+v", st)
			}
			if c.other == nil {
				if st.Other != nil || st.RolledBack != nil {
					t.Fatalf("%+v", st)
				}
				return
			}
			if st.Other == nil || st.Other.State != c.otherState || st.Other.ID != other {
				t.Fatalf("other %+v", st.Other)
			}
			if c.rolledBack != (st.RolledBack != nil) {
				t.Fatalf("rolled back %+v", st.RolledBack)
			}
			if c.rolledBack && (st.RolledBack.Trial != c.trialFile || st.RolledBack.TriesDone != 3) {
				t.Fatalf("rolled back %+v", st.RolledBack)
			}
			js, _ := json.Marshal(st)
			if !json.Valid(js) {
				t.Fatal("status does not encode")
			}
			// What the model of systemd-boot boots agrees with the state.
			pick := sdPick(t, f.root)
			switch {
			case c.otherState == slot.StateStaged, c.running == slot.StateTrial:
				if !strings.Contains(pick, map[bool]string{true: runID, false: other}[c.running == slot.StateTrial]) {
					t.Fatalf("systemd-boot boots %s", pick)
				}
			case c.otherState == slot.StateBad:
				if !strings.Contains(pick, runID) {
					t.Fatalf("systemd-boot boots %s", pick)
				}
			}
		})
	}
}

// The size bound is a sum of signed int64s: sizes that overflow it must
// not pass for a small slot (it takes the image-signing key to send).
func TestInstallRefusesSizesThatOverflow(t *testing.T) {
	f := newFixture(t, slot.Entry{Gen: 1})
	z := strings.Repeat("0", 64)
	m := fmt.Sprintf(`{"format":1,"id":"2222222222222222","cluster":%q,"member":%q,"kernel":"6.1","files":[`+
		`{"name":"signing.pub","size":4611686018427387904,"sha256":%q},{"name":"node.ign","size":4611686018427387904,"sha256":%q},`+
		`{"name":"etcdnode","size":4611686018427387904,"sha256":%q},{"name":"uki.efi","size":4611686018427387904,"sha256":%q}]}`,
		testCluster, testMember, z, z, z, z)
	var mf slot.Manifest
	json.Unmarshal([]byte(m), &mf)
	if mf.Size() > 0 {
		t.Skipf("no overflow: %d", mf.Size())
	}
	b := signedRaw(t, f.key, []byte(m), nil)
	_, err := f.esp().Install(bytes.NewReader(b), testWant, 3, MaxSlot)
	if err == nil || !strings.Contains(err.Error(), "more than") && !strings.Contains(err.Error(), "size 4611686018427387904") {
		t.Fatalf("a manifest of 4 x 2^62 bytes (Size() = %d) against a %d-byte limit: %v", mf.Size(), MaxSlot, err)
	}
}

// The new slot's signing.pub is the only key its node will take updates
// from: a slot whose key does not parse installs, boots, may be marked
// good, and then refuses every update for ever (only a new image fixes
// the member). Install can check it before the commit.
func TestInstallRefusesASlotThatCouldTakeNoUpdate(t *testing.T) {
	f := newFixture(t, slot.Entry{Gen: 1})
	const next = "2222222222222222"
	b := f.bundle(next, testCluster, testMember, "n")
	b.Files[slot.FileSigningKey] = []byte("not a key\n")
	b, err := slot.NewBundle(slot.Manifest{Format: slot.Format, ID: next, Cluster: testCluster, Member: testMember, Kernel: "6.1"}, b.Files, f.key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.install(raw(t, b)); err != nil {
		return // refused: fine
	}
	_, kerr := ESP{Root: f.root, Running: next}.TrustedKey()
	t.Fatalf("installed a slot whose image-signing key does not parse; once it runs: %v", kerr)
}
