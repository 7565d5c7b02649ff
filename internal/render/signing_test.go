package render

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// TestImageSigningKeyStaysInPKI: render writes the image-signing pair
// into pki/ (the key 0600, its public key 0644), no other file of the
// output directory holds the key, a rerun keeps it byte for byte, and a
// directory rendered before the key existed gets one on its next run.
func TestImageSigningKeyStaysInPKI(t *testing.T) {
	c := spec.Default(3)
	dir := outdir.Layout(filepath.Join(t.TempDir(), "out"))
	keyPath, pubPath := dir.PKIFile(pki.ImageSigningKey), dir.PKIFile(pki.ImageSigningPub)
	check := func(step string) []byte {
		t.Helper()
		for path, mode := range map[string]fs.FileMode{keyPath: 0o600, pubPath: 0o644} {
			if st, err := os.Stat(path); err != nil || st.Mode().Perm() != mode {
				t.Fatalf("%s: %s: %v, want mode %o", step, path, err, mode)
			}
		}
		if _, _, err := pki.LoadImageSigner(dir.PKI()); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		key := readFile(t, keyPath)
		filepath.WalkDir(dir.Dir(), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || p == keyPath {
				return err
			}
			if pki.ContainsKey(readFile(t, p), key) {
				t.Errorf("%s: %s holds the image-signing key", step, p)
			}
			return nil
		})
		return key
	}

	if _, err := Run(c, dir); err != nil {
		t.Fatal(err)
	}
	key := check("first run")
	ca := readFile(t, dir.PKIFile(pki.CACertFile))

	if _, err := Run(c, dir); err != nil {
		t.Fatal(err)
	}
	if again := check("rerun"); !bytes.Equal(again, key) {
		t.Error("a rerun replaced the image-signing key")
	}

	// A directory from before the key: the next run makes one, and
	// keeps the CA.
	os.Remove(keyPath)
	os.Remove(pubPath)
	if _, err := Run(c, dir); err != nil {
		t.Fatal(err)
	}
	if made := check("old directory"); bytes.Equal(made, key) {
		t.Error("the removed key came back")
	}
	if !bytes.Equal(ca, readFile(t, dir.PKIFile(pki.CACertFile))) {
		t.Error("making the image-signing key replaced the CA")
	}
}
