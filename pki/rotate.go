package pki

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"etcdimg/internal/spec"
)

// A CA rotation replaces the CA in three phases, each rolled out to every
// member before the next begins, so that at every moment each member and
// client trusts the CA of every certificate it is shown:
//
//	trust   a new CA is made (kept in next/ beside the current one);
//	        etcd-ca.pem becomes old+new: every member trusts both.
//	switch  the new CA signs: etcd-ca.pem becomes new+old, etcd-ca-key.pem
//	        the new key, and every certificate is reissued under it.
//	drop    etcd-ca.pem becomes the new CA alone: a certificate of the old
//	        one is refused everywhere.
//
// Rotation records the phase reached in ca-rotation.json, and whether its
// roll-out finished, so that an interrupted phase is resumed.
type Rotation struct {
	Phase  string    `json:"phase"`
	Rolled bool      `json:"rolled"`
	Began  time.Time `json:"began"`
}

// The rotation's phases, in order.
const (
	PhaseTrust  = "trust"
	PhaseSwitch = "switch"
	PhaseDrop   = "drop"
)

// RotationFile records a CA rotation under way; NextDir holds the new CA
// during the trust phase.
const (
	RotationFile = "ca-rotation.json"
	NextDir      = "next"
)

// LoadRotation reads the rotation under way in dir, or nil.
func LoadRotation(dir string) (*Rotation, error) {
	b, err := os.ReadFile(filepath.Join(dir, RotationFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	var r Rotation
	if err := json.Unmarshal(b, &r); err != nil || (r.Phase != PhaseTrust && r.Phase != PhaseSwitch && r.Phase != PhaseDrop) {
		return nil, fmt.Errorf("pki: %s is not a rotation record (%v); restore it from the retired/ copy or finish by hand", filepath.Join(dir, RotationFile), err)
	}
	return &r, nil
}

// File is the record as a file of the pki directory.
func (r Rotation) File() File {
	b, _ := json.MarshalIndent(r, "", "  ")
	return File{RotationFile, append(b, '\n'), 0o644}
}

// RotateTrust begins a rotation: a new CA (the spec's key algorithm and
// CA lifetime), kept in next/, and etcd-ca.pem as old+new. The current CA
// keeps signing.
func RotateTrust(c *spec.Cluster, dir string) ([]File, error) {
	ca, _, certPEM, _, err := loadCA(dir)
	if err != nil {
		return nil, err
	}
	if ca == nil {
		return nil, fmt.Errorf("pki: %s holds no CA; run `etcdimg build` first", dir)
	}
	if n, _ := ParseBundle(certPEM); len(n) > 1 {
		return nil, fmt.Errorf("pki: %s already holds %d CAs but no rotation is recorded; keep only the current CA in it first", filepath.Join(dir, CACertFile), len(n))
	}
	newCert, newKey, err := newCA(c)
	if err != nil {
		return nil, err
	}
	return []File{
		{filepath.Join(NextDir, CACertFile), newCert, 0o644},
		{filepath.Join(NextDir, CAKeyFile), newKey, 0o600},
		{CACertFile, bundle(certPEM, newCert), 0o644},
		Rotation{Phase: PhaseTrust, Began: time.Now().UTC()}.File(),
	}, nil
}

// RotateSwitch makes the new CA of next/ the signing one: etcd-ca.pem
// new+old, etcd-ca-key.pem the new key. Every certificate signed by the
// old CA no longer fits, so Ensure reissues it.
//
// The old CA may have expired since the trust phase: it signs nothing
// more, so it is read as it is.
func RotateSwitch(dir string, r Rotation) ([]File, error) {
	_, _, oldCert, _, err := readCA(dir, false)
	if err != nil {
		return nil, err
	}
	next := filepath.Join(dir, NextDir)
	newCA, _, newCert, newKey, err := loadCA(next)
	if err != nil || newCA == nil {
		return nil, fmt.Errorf("pki: the new CA in %s is missing or unusable (%v); it was made by the trust phase: restore it", next, err)
	}
	old, _ := ParseBundle(oldCert)
	r.Phase, r.Rolled = PhaseSwitch, false
	return []File{
		{CACertFile, bundle(newCert, pemOf(old[0].Raw)), 0o644},
		{CAKeyFile, newKey, 0o600},
		r.File(),
	}, nil
}

// RotateDrop leaves the new CA alone in etcd-ca.pem (the old one, second
// in the bundle, may have expired).
func RotateDrop(dir string, r Rotation) ([]File, error) {
	ca, _, _, _, err := readCA(dir, false)
	if err != nil {
		return nil, err
	}
	r.Phase, r.Rolled = PhaseDrop, false
	return []File{{CACertFile, pemOf(ca.Raw), 0o644}, r.File()}, nil
}

// CAExpired reports whether the signing CA in dir (the first of
// etcd-ca.pem) has expired: a trust phase whose roll-out was cut short
// by it has nothing left to roll, and the rotation goes on to switch.
func CAExpired(dir string) (bool, error) {
	ca, _, _, _, err := readCA(dir, false)
	if err != nil || ca == nil {
		return false, err
	}
	return time.Now().After(ca.NotAfter), nil
}

func pemOf(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func bundle(parts ...[]byte) []byte {
	var b bytes.Buffer
	for _, p := range parts {
		b.Write(bytes.TrimSpace(p))
		b.WriteByte('\n')
	}
	return b.Bytes()
}
