package slot

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"strings"
	"testing"
)

func testKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testFiles() map[string][]byte {
	return map[string][]byte{
		FileUKI: []byte("MZ uki"), FileNode: []byte("ELF node"), FileConfig: []byte(`{"ignition":{}}`), FileSigningKey: []byte("pub"),
	}
}

func testManifest() Manifest {
	return Manifest{Format: Format, ID: "0123456789abcdef", Cluster: "c1", Member: "etcd-1", Kernel: "6.1"}
}

// read opens a bundle and reads every file, as the node does.
func read(raw []byte, pub ed25519.PublicKey) (map[string]string, error) {
	r, err := OpenBundle(bytes.NewReader(raw), pub)
	if err != nil {
		return nil, err
	}
	got := map[string]string{}
	err = r.Each(func(f File, data io.Reader) error {
		b, err := io.ReadAll(data)
		got[f.Name] = string(b)
		return err
	})
	return got, err
}

func TestABundleIsBelievedOnlyWhole(t *testing.T) {
	key := testKey(t)
	b, err := NewBundle(testManifest(), testFiles(), key)
	if err != nil {
		t.Fatal(err)
	}
	good, err := b.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	pub := key.Public().(ed25519.PublicKey)
	got, err := read(good, pub)
	if err != nil || got[FileNode] != "ELF node" || len(got) != 4 {
		t.Fatalf("the good bundle: %v %v", got, err)
	}

	other := testKey(t)
	flip := func(raw []byte, what string) []byte {
		out := bytes.Clone(raw)
		i := bytes.Index(out, []byte(what))
		if i < 0 {
			t.Fatalf("no %q in the bundle", what)
		}
		out[i] ^= 1
		return out
	}
	rebuild := func(mutate func(*Bundle)) []byte {
		c := Bundle{Manifest: b.Manifest, Signature: b.Signature, Files: map[string][]byte{}}
		for k, v := range b.Files {
			c.Files[k] = v
		}
		mutate(&c)
		raw, err := c.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	signedByOther, _ := NewBundle(testManifest(), testFiles(), other)
	foreign, _ := signedByOther.Bytes()
	for _, tc := range []struct {
		name, want string
		raw        []byte
	}{
		{"a flipped byte in the node binary", "the update was changed on the way", flip(good, "ELF node")},
		{"a flipped byte in the manifest", "not this member's image-signing key", flip(good, `"etcd-1"`)},
		{"signed by another key", "not this member's image-signing key", foreign},
		{"a file missing", "node.ign is missing", rebuild(func(c *Bundle) { delete(c.Files, FileConfig) })},
		{"a file longer than signed", "the manifest says", rebuild(func(c *Bundle) { c.Files[FileUKI] = []byte("MZ uki!") })},
		{"cut short", "", good[:len(good)/2]},
		{"not a bundle", "not an etcdimg update", tarOf(t, "etc/passwd", "root")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := read(tc.raw, pub)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func tarOf(t *testing.T, name, body string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: name, Size: int64(len(body)), Mode: 0o644, Typeflag: tar.TypeReg})
	tw.Write([]byte(body))
	tw.Close()
	return buf.Bytes()
}

func TestAManifestNamesWhatANodeCanInstall(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Manifest)
		want   string
	}{
		{"valid", func(*Manifest) {}, ""},
		{"a short id", func(m *Manifest) { m.ID = "abc" }, "16 hex digits"},
		{"a path as a file", func(m *Manifest) { m.Files[0].Name = "../../etc/passwd" }, "unknown file"},
		{"no UKI", func(m *Manifest) { m.Files = m.Files[:2] }, "no uki.efi"},
		{"a member without a cluster", func(m *Manifest) { m.Cluster = "" }, "both or neither"},
		{"another format", func(m *Manifest) { m.Format = 2 }, "format 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := testManifest()
			for _, n := range Files {
				m.Files = append(m.Files, NewFile(n, testFiles()[n]))
			}
			tc.mutate(&m)
			err := m.Check()
			if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestEntryNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		want Entry
		ok   bool
	}{
		{"etcdimg-1-0123456789abcdef.efi", Entry{Gen: 1, ID: "0123456789abcdef"}, true},
		{"etcdimg-12-0123456789abcdef+3.efi", Entry{Gen: 12, ID: "0123456789abcdef", Counting: true, TriesLeft: 3}, true},
		{"etcdimg-2-0123456789abcdef+2-1.efi", Entry{Gen: 2, ID: "0123456789abcdef", Counting: true, TriesLeft: 2, TriesDone: 1}, true},
		{"etcdimg-2-0123456789abcdef+0-3.efi", Entry{Gen: 2, ID: "0123456789abcdef", Counting: true, TriesDone: 3}, true},
		{"ETCDIMG-2-0123456789ABCDEF.EFI", Entry{Gen: 2, ID: "0123456789abcdef"}, true}, // FAT keeps case loosely
		{"etcdimg-2-0123456789abcdef.efi.tmp", Entry{}, false},
		{"etcdimg-0-0123456789abcdef.efi", Entry{}, false},
		{"systemd-bootx64.efi", Entry{}, false},
	} {
		got, ok := ParseEntry(tc.name)
		if ok != tc.ok || got != tc.want {
			t.Errorf("%s: got %+v %v, want %+v %v", tc.name, got, ok, tc.want, tc.ok)
		}
		if ok && strings.ToLower(tc.name) != got.Name() {
			t.Errorf("%s: Name() = %s", tc.name, got.Name())
		}
	}
	if !(Entry{Counting: true}).Spent() || (Entry{}).Spent() || (Entry{Counting: true, TriesLeft: 1}).Spent() {
		t.Error("Spent")
	}
}

func TestTheSlotIDFollowsItsParts(t *testing.T) {
	a, b := ID([]byte("ab"), []byte("c")), ID([]byte("a"), []byte("bc"))
	if a == b || !ValidID(a) || ID([]byte("ab"), []byte("c")) != a {
		t.Fatalf("%s %s", a, b)
	}
}
