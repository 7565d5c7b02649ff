package pki

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"etcdimg/internal/spec"
)

// signingFile is the image-signing file name of s.Files().
func signingFile(t *testing.T, s *Set, name string) File {
	t.Helper()
	for _, f := range s.Files() {
		if f.Name == name {
			return f
		}
	}
	t.Fatalf("Files() has no %s", name)
	return File{}
}

// TestImageSigningKeyIsMadeOnceAndKept: render's Ensure makes the pair
// where there is none (a new directory, or one rendered before the key
// existed), keeps it byte for byte after, and derives a lost public key
// from the key; LoadImageSigner reads back the pair Ensure gave.
func TestImageSigningKeyIsMadeOnceAndKept(t *testing.T) {
	c := spec.Default(1)
	for _, tc := range []struct {
		name       string
		setup      func(t *testing.T, dir string, first *Set) // first is written to dir before
		wantIssued []string                                   // of the two signing files
		keep       bool                                       // the pair is first's
	}{
		{"new directory", func(t *testing.T, dir string, _ *Set) { os.RemoveAll(dir) }, []string{ImageSigningKey, ImageSigningPub}, false},
		{"second Ensure", func(*testing.T, string, *Set) {}, nil, true},
		{"directory rendered before the key", func(t *testing.T, dir string, _ *Set) {
			os.Remove(filepath.Join(dir, ImageSigningKey))
			os.Remove(filepath.Join(dir, ImageSigningPub))
		}, []string{ImageSigningKey, ImageSigningPub}, false},
		{"public key lost", func(t *testing.T, dir string, _ *Set) { os.Remove(filepath.Join(dir, ImageSigningPub)) }, []string{ImageSigningPub}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pki")
			first, err := Ensure(c, dir)
			if err != nil {
				t.Fatal(err)
			}
			write(t, dir, first)
			tc.setup(t, dir, first)
			s, err := Ensure(c, dir)
			if err != nil {
				t.Fatal(err)
			}
			var issued []string
			for _, n := range s.Issued {
				if n == ImageSigningKey || n == ImageSigningPub {
					issued = append(issued, n)
				}
			}
			if !slices.Equal(issued, tc.wantIssued) {
				t.Errorf("issued %v, want %v", issued, tc.wantIssued)
			}
			if same := bytes.Equal(s.SigningKey, first.SigningKey) && bytes.Equal(s.SigningPub, first.SigningPub); same != tc.keep {
				t.Errorf("pair kept = %v, want %v", same, tc.keep)
			}
			if !bytes.Equal(s.CACert, first.CACert) && tc.name != "new directory" {
				t.Error("the CA changed")
			}

			// The files: a PKCS#8 Ed25519 key 0600, its PKIX public key 0644.
			kf, pf := signingFile(t, s, ImageSigningKey), signingFile(t, s, ImageSigningPub)
			if kf.Mode != 0o600 || pf.Mode != 0o644 {
				t.Errorf("modes %o, %o; want 600, 644", kf.Mode, pf.Mode)
			}
			kb, _ := pem.Decode(kf.Data)
			pb, _ := pem.Decode(pf.Data)
			if kb == nil || kb.Type != "PRIVATE KEY" || pb == nil || pb.Type != "PUBLIC KEY" {
				t.Fatalf("PEM blocks %v / %v", kb, pb)
			}
			k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			p, err := x509.ParsePKIXPublicKey(pb.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			key, ok1 := k.(ed25519.PrivateKey)
			pub, ok2 := p.(ed25519.PublicKey)
			if !ok1 || !ok2 || !pub.Equal(key.Public()) {
				t.Fatalf("key %T, public key %T: not a matching Ed25519 pair", k, p)
			}

			// Written, the pair loads and signs what the public key checks.
			write(t, dir, s)
			lk, lp, err := LoadImageSigner(dir)
			if err != nil {
				t.Fatal(err)
			}
			if !lk.Equal(key) || !bytes.Equal(lp, s.SigningPub) {
				t.Error("LoadImageSigner read another pair")
			}
			if msg := []byte("image"); !ed25519.Verify(pub, msg, ed25519.Sign(lk, msg)) {
				t.Error("a signature by the loaded key does not verify")
			}
		})
	}
}

// TestBrokenImageSigningKeyIsRefused: a pair that cannot be used stops
// Ensure and LoadImageSigner with one line naming the file and the fix,
// and nothing in the directory changes: members trust the public key
// they were built with, so a key is never silently replaced.
func TestBrokenImageSigningKeyIsRefused(t *testing.T) {
	c := spec.Default(1)
	other, err := Ensure(c, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	put := func(name string, data []byte) func(string) {
		return func(dir string) { os.WriteFile(filepath.Join(dir, name), data, 0o600) }
	}
	for _, tc := range []struct {
		name     string
		setup    func(dir string)
		want     string // from Ensure and LoadImageSigner
		loadOnly bool   // Ensure mends it (makes or derives)
	}{
		{"public key of another pair", put(ImageSigningPub, other.SigningPub), "image-signing.pub is not the public key of image-signing.key", false},
		{"private key of another pair", put(ImageSigningKey, other.SigningKey), "image-signing.pub is not the public key of image-signing.key", false},
		{"corrupt key", put(ImageSigningKey, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")), "image-signing.key is not a PEM Ed25519 private key", false},
		{"key not PEM", put(ImageSigningKey, []byte("nope")), "image-signing.key is not a PEM Ed25519 private key (want a PRIVATE KEY block)", false},
		{"key not Ed25519", put(ImageSigningKey, other.Members["etcd-1"].Key), "image-signing.key is not a PEM Ed25519 private key", false},
		{"corrupt public key", put(ImageSigningPub, []byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")), "image-signing.pub is not a PEM Ed25519 public key", false},
		{"public key is the CA certificate", put(ImageSigningPub, other.CACert), "image-signing.pub is not a PEM Ed25519 public key (image-signing key: not a PEM public key)", false},
		{"key lost, public key kept", func(dir string) { os.Remove(filepath.Join(dir, ImageSigningKey)) }, "image-signing.key is missing; put the image-signing key back", false},
		{"key unreadable", func(dir string) {
			p := filepath.Join(dir, ImageSigningKey)
			os.Remove(p)
			os.Mkdir(p, 0o700)
		}, ImageSigningKey + ": is a directory; make it a file etcdimg can read", false},
		{"no pair", func(dir string) {
			os.Remove(filepath.Join(dir, ImageSigningKey))
			os.Remove(filepath.Join(dir, ImageSigningPub))
		}, "image-signing.key is missing; run `etcdimg render` to make the image-signing key", true},
		{"no public key", func(dir string) { os.Remove(filepath.Join(dir, ImageSigningPub)) }, "image-signing.pub is missing; run `etcdimg render` to write it from image-signing.key", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Ensure(c, dir)
			if err != nil {
				t.Fatal(err)
			}
			write(t, dir, s)
			tc.setup(dir)
			before := snapshot(t, dir)
			oneLine := func(who string, err error) {
				t.Helper()
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s: err = %v, want %q", who, err, tc.want)
				} else if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "`etcdimg render`") {
					t.Errorf("%s: error is not one line with the fix: %q", who, err)
				}
			}
			_, _, err = LoadImageSigner(dir)
			oneLine("LoadImageSigner", err)
			if _, err := Ensure(c, dir); tc.loadOnly {
				if err != nil {
					t.Errorf("Ensure: %v, want it to mend the pair", err)
				}
			} else {
				oneLine("Ensure", err)
			}
			if after := snapshot(t, dir); after != before {
				t.Errorf("the refusal changed the directory")
			}
		})
	}
}
