package pki

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"etcdimg/internal/slot"
)

// The image-signing pair, beside the CA: an Ed25519 key that signs the
// images members take over the network, and its public key, which the
// images carry to check the next one. It is not part of the CA and no
// CA rotation touches it. The private key stays in the pki directory:
// no image and no member's config may hold it.
const (
	// ImageSigningKey is the private key, PKCS#8 PEM ("PRIVATE KEY").
	ImageSigningKey = "image-signing.key"
	// ImageSigningPub is its public key, PKIX PEM ("PUBLIC KEY").
	ImageSigningPub = "image-signing.pub"
)

// ensureImageSigner fills s's image-signing pair from dir: the pair
// there is kept as it is, a missing public key is derived from the key,
// and with neither file a new pair is made. A key that cannot be used is
// an error, never replaced: members trust the public key they were
// built with.
func ensureImageSigner(s *Set, dir string) error {
	key, keyPEM, pubPEM, err := readImageSigner(dir)
	if err != nil {
		return err
	}
	if key == nil {
		_, key, err = ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return fmt.Errorf("pki: new image-signing key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return fmt.Errorf("pki: encode %s: %w", ImageSigningKey, err)
		}
		keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		s.Issued = append(s.Issued, ImageSigningKey)
	}
	if pubPEM == nil {
		der, err := x509.MarshalPKIXPublicKey(key.Public())
		if err != nil {
			return fmt.Errorf("pki: encode %s: %w", ImageSigningPub, err)
		}
		pubPEM = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
		s.Issued = append(s.Issued, ImageSigningPub)
	}
	s.SigningKey, s.SigningPub = keyPEM, pubPEM
	return nil
}

// LoadImageSigner reads the image-signing pair from the pki directory
// dir: the private key, and the public key as its PEM file holds it. A
// missing, unreadable or corrupt file, or a public key that is not the
// private key's, is a one-line error that names the file and the fix.
func LoadImageSigner(dir string) (ed25519.PrivateKey, []byte, error) {
	key, _, pubPEM, err := readImageSigner(dir)
	switch {
	case err != nil:
		return nil, nil, err
	case key == nil:
		return nil, nil, fmt.Errorf("pki: %s is missing; run `etcdimg render` to make the image-signing key", filepath.Join(dir, ImageSigningKey))
	case pubPEM == nil:
		return nil, nil, fmt.Errorf("pki: %s is missing; run `etcdimg render` to write it from %s", filepath.Join(dir, ImageSigningPub), ImageSigningKey)
	}
	return key, pubPEM, nil
}

// readImageSigner reads the pair in dir. The key is nil when neither
// file exists; pubPEM is nil when only the key does.
func readImageSigner(dir string) (key ed25519.PrivateKey, keyPEM, pubPEM []byte, err error) {
	keyPath, pubPath := filepath.Join(dir, ImageSigningKey), filepath.Join(dir, ImageSigningPub)
	keyPEM, keyErr := os.ReadFile(keyPath)
	pubPEM, pubErr := os.ReadFile(pubPath)
	fail := func(err error) (ed25519.PrivateKey, []byte, []byte, error) { return nil, nil, nil, err }
	// What makes a new pair: it is refused by every member built with
	// the old public key until each is rebuilt.
	const anew = "or move " + ImageSigningKey + " and " + ImageSigningPub + " aside and run `etcdimg render` for a new pair (then rebuild every member: they trust the old public key)"
	switch {
	case keyErr != nil && !errors.Is(keyErr, fs.ErrNotExist):
		return fail(fmt.Errorf("pki: %w; make it a file etcdimg can read and run `etcdimg render` again", keyErr))
	case pubErr != nil && !errors.Is(pubErr, fs.ErrNotExist):
		return fail(fmt.Errorf("pki: %w; make it a file etcdimg can read and run `etcdimg render` again", pubErr))
	case keyErr != nil && pubErr != nil:
		return fail(nil)
	case keyErr != nil:
		return fail(fmt.Errorf("pki: %s exists but %s is missing; put the image-signing key back, %s", pubPath, keyPath, anew))
	}
	if key, err = parseImageSigningKey(keyPEM); err != nil {
		return fail(fmt.Errorf("pki: %s is not a PEM Ed25519 private key (%v); restore it, %s", keyPath, err, anew))
	}
	if pubErr != nil {
		return key, keyPEM, nil, nil
	}
	pub, err := parseImageSigningPub(pubPEM)
	if err != nil {
		return fail(fmt.Errorf("pki: %s is not a PEM Ed25519 public key (%v); delete it and run `etcdimg render` to write it from %s", pubPath, err, ImageSigningKey))
	}
	if !pub.Equal(key.Public()) {
		return fail(fmt.Errorf("pki: %s is not the public key of %s (a foreign pair); restore the pair, or delete %s and run `etcdimg render` to write it from the key", pubPath, ImageSigningKey, ImageSigningPub))
	}
	return key, keyPEM, pubPEM, nil
}

func parseImageSigningKey(keyPEM []byte) (ed25519.PrivateKey, error) {
	b, _ := pem.Decode(keyPEM)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, errors.New("want a PRIVATE KEY block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("a %T, not Ed25519", k)
	}
	return key, nil
}

// parseImageSigningPub reads the public key as every slot carries it and
// the node reads it (slot.ParsePublicKey).
func parseImageSigningPub(pubPEM []byte) (ed25519.PublicKey, error) {
	return slot.ParsePublicKey(pubPEM)
}
