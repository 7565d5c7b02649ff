package render

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// The output directory's side of certificate rotation: which files a
// reissue moves under retired/ first, and the CA rotation's phases
// (pki.Rotation) as changes to the directory. Rolling the members onto
// the result is the caller's: render never reaches a running cluster.

// leafFiles are the certificates and keys the CA signed for the cluster
// itself (members, admin, Kubernetes API server, scraper), relative to
// the output directory: what a reissue moves under retired/ first.
func leafFiles(c *spec.Cluster) []string {
	files := []string{pki.AdminCert, pki.AdminKey, pki.KubeClientCert, pki.KubeClientKey, pki.PrometheusCert, pki.PrometheusKey}
	for _, n := range c.Names() {
		files = append(files, pki.MemberCertFile(n), pki.MemberKeyFile(n))
	}
	var rels []string
	for _, f := range files {
		rels = append(rels, filepath.Join("pki", f))
	}
	return rels
}

// RetireLeaves moves every certificate and key the CA signed for the
// cluster itself under retired/stamp (the CA and the clients' pairs
// stay), so that the next Run issues them anew under the same CA. It
// returns the relative paths it moved.
func RetireLeaves(c *spec.Cluster, dir outdir.Layout, stamp string) ([]string, error) {
	return MoveToRetired(dir, stamp, leafFiles(c))
}

// RotationStep is the phase of a CA rotation that runs next on a
// directory.
type RotationStep struct {
	// Phase is pki.PhaseTrust, PhaseSwitch or PhaseDrop; "" when the
	// drop phase was rolled out and only FinishRotation is left.
	Phase string
	// Resume: the phase's files are written but its roll-out did not
	// finish; Write leaves them as they are.
	Resume bool
	// Expired: the old CA expired before the trust phase was rolled
	// out, so no certificate of it is accepted any more and there is
	// nothing left to roll; the step is the switch instead.
	Expired bool
	record  *pki.Rotation // the record before this step; nil for a new rotation
}

// NextRotationStep reads the rotation under way in dir (none: a new one
// begins with the trust phase) and says which phase runs next.
func NextRotationStep(dir outdir.Layout) (RotationStep, error) {
	r, err := pki.LoadRotation(dir.PKI())
	if err != nil {
		return RotationStep{}, err
	}
	s := RotationStep{Phase: pki.PhaseTrust, record: r}
	switch {
	case r == nil:
	case !r.Rolled:
		s.Phase, s.Resume = r.Phase, true
	case r.Phase == pki.PhaseTrust:
		s.Phase = pki.PhaseSwitch
	case r.Phase == pki.PhaseSwitch:
		s.Phase = pki.PhaseDrop
	default:
		s.Phase = ""
	}
	if s.Phase == pki.PhaseTrust && s.Resume {
		expired, err := pki.CAExpired(dir.PKI())
		if err != nil {
			return RotationStep{}, err
		}
		if expired {
			s.Phase, s.Resume, s.Expired = pki.PhaseSwitch, false, true
		}
	}
	return s, nil
}

// Write changes the PKI of dir for the step's phase, or nothing when the
// step resumes one: for switch, the old CA's pair and every certificate
// it signed go under retired/stamp first (the old CA's key is copied
// aside before the commit replaces it, so that no moment leaves the
// directory without a CA key); then the phase's files and its record are
// written in one commit. The members' new certificates are issued by the
// next Run.
func (s RotationStep) Write(c *spec.Cluster, dir outdir.Layout, stamp string) error {
	if s.Resume {
		return nil
	}
	var files []pki.File
	var err error
	switch s.Phase {
	case pki.PhaseTrust:
		files, err = pki.RotateTrust(c, dir.PKI())
	case pki.PhaseSwitch:
		if files, err = pki.RotateSwitch(dir.PKI(), *s.record); err != nil {
			return err
		}
		key, err := os.ReadFile(dir.PKIFile(pki.CAKeyFile))
		if err != nil {
			return err
		}
		cert, err := os.ReadFile(dir.PKIFile(pki.CACertFile))
		if err != nil {
			return err
		}
		if _, err := outdir.Write(filepath.Join(RetiredPath(dir, stamp), "pki", "old-ca"), []outdir.File{
			{Path: pki.CACertFile, Data: cert, Mode: 0o644}, {Path: pki.CAKeyFile, Data: key, Mode: 0o600},
		}); err != nil {
			return err
		}
		if _, err := RetireLeaves(c, dir, stamp); err != nil {
			return err
		}
	case pki.PhaseDrop:
		files, err = pki.RotateDrop(dir.PKI(), *s.record)
	default:
		return fmt.Errorf("render: no phase of a CA rotation is left to write; finish it")
	}
	if err != nil {
		return err
	}
	var out []outdir.File
	for _, f := range files {
		out = append(out, fileOf(f))
	}
	if _, err := outdir.Write(dir.PKI(), out); err != nil {
		return err
	}
	if s.Phase == pki.PhaseSwitch {
		// The new CA now lives in etcd-ca-key.pem and first in
		// etcd-ca.pem: next/ is a second copy of its key, removed once
		// the live one is checked to be the same bytes.
		next := filepath.Join(dir.PKI(), pki.NextDir)
		live, _ := os.ReadFile(dir.PKIFile(pki.CAKeyFile))
		if staged, err := os.ReadFile(filepath.Join(next, pki.CAKeyFile)); err == nil && bytes.Equal(staged, live) {
			os.Remove(filepath.Join(next, pki.CAKeyFile))
			os.Remove(filepath.Join(next, pki.CACertFile))
			os.Remove(next)
		}
	}
	return nil
}

// MarkRotationRolled records that the rotation's current phase was rolled
// out to every member, so that the next step goes on to the next phase.
func MarkRotationRolled(dir outdir.Layout) error {
	r, err := pki.LoadRotation(dir.PKI())
	if err != nil || r == nil {
		return fmt.Errorf("rotate ca: the rotation record is gone after the roll: %v", err)
	}
	r.Rolled = true
	_, err = outdir.Write(dir.PKI(), []outdir.File{fileOf(r.File())})
	return err
}

// FinishRotation moves the finished rotation's record under
// retired/stamp and removes the emptied next/: the next step begins a new
// rotation.
func FinishRotation(dir outdir.Layout, stamp string) error {
	if _, err := MoveToRetired(dir, stamp, []string{filepath.Join("pki", pki.RotationFile)}); err != nil {
		return err
	}
	os.Remove(filepath.Join(dir.PKI(), pki.NextDir))
	return nil
}

func fileOf(f pki.File) outdir.File { return outdir.File{Path: f.Name, Data: f.Data, Mode: f.Mode} }
