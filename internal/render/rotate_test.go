package render

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"etcdimg/internal/outdir"
	"etcdimg/internal/pkitest"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// rendered is an output directory Run wrote for c, with a client's pair
// in OUT/clients.
func rendered(t *testing.T, c *spec.Cluster) outdir.Layout {
	t.Helper()
	dir := outdir.Layout(filepath.Join(t.TempDir(), "out"))
	if _, err := Run(c, dir); err != nil {
		t.Fatal(err)
	}
	pair, err := pki.IssueClient(c, dir.PKI(), "app")
	if err != nil {
		t.Fatal(err)
	}
	if err := InstallClient(dir, "app", pair, "20250101T000000"); err != nil {
		t.Fatal(err)
	}
	return dir
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// bundleOf is the CA certificates of path, in order.
func bundleOf(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	b, err := pki.ParseBundle(readFile(t, path))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// chainsTo checks that the certificate file chains to ca alone.
func chainsTo(t *testing.T, certFile string, ca *x509.Certificate) error {
	t.Helper()
	cert, err := pki.ParseCert(readFile(t, certFile))
	if err != nil {
		t.Fatal(err)
	}
	return pki.Verify(ca, cert, x509.ExtKeyUsageClientAuth)
}

func step(t *testing.T, dir outdir.Layout, want string, resume bool) RotationStep {
	t.Helper()
	s, err := NextRotationStep(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.Phase != want || s.Resume != resume || s.Expired {
		t.Fatalf("next step %+v, want phase %q resume %v", s, want, resume)
	}
	return s
}

// TestCARotationPhasesOnTheOutputDirectory runs `rotate ca`'s three
// phases on an output directory as the verb does (write the phase,
// render as the roll's build does, mark it rolled) and checks the files
// after each: the bundle's order, who signs the certificates, what went
// under retired/, and that the record ends retired with next/ gone.
func TestCARotationPhasesOnTheOutputDirectory(t *testing.T) {
	c := spec.Default(3)
	dir := rendered(t, c)
	oldCA := bundleOf(t, dir.PKIFile(pki.CACertFile))[0]
	oldKey := readFile(t, dir.PKIFile(pki.CAKeyFile))
	oldMember := readFile(t, dir.PKIFile(pki.MemberCertFile("etcd-1")))
	roll := func() {
		t.Helper()
		if _, err := Run(c, dir); err != nil {
			t.Fatal(err)
		}
		if err := MarkRotationRolled(dir); err != nil {
			t.Fatal(err)
		}
	}

	// trust: etcd-ca.pem is old+new, the new CA waits in next/, the
	// certificates are the old CA's still.
	s := step(t, dir, pki.PhaseTrust, false)
	if err := s.Write(c, dir, "20250101T000001"); err != nil {
		t.Fatal(err)
	}
	// Cut short before the roll: the next run resumes, writing nothing.
	before := readFile(t, dir.PKIFile(pki.CACertFile))
	s = step(t, dir, pki.PhaseTrust, true)
	if err := s.Write(c, dir, "20250101T000001"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, readFile(t, dir.PKIFile(pki.CACertFile))) {
		t.Error("resuming the trust phase wrote the CA bundle again")
	}
	roll()
	b := bundleOf(t, dir.PKIFile(pki.CACertFile))
	if len(b) != 2 || !b[0].Equal(oldCA) || b[1].Equal(oldCA) {
		t.Fatalf("after trust etcd-ca.pem holds %d CAs, want the old then a new one", len(b))
	}
	newCA := b[1]
	if next := bundleOf(t, filepath.Join(dir.PKI(), pki.NextDir, pki.CACertFile)); !next[0].Equal(newCA) {
		t.Error("next/ does not hold the new CA")
	}
	if !bytes.Equal(oldMember, readFile(t, dir.PKIFile(pki.MemberCertFile("etcd-1")))) {
		t.Error("the trust phase reissued a member's certificate")
	}

	// switch: the new CA signs; the old pair and the old leaves are
	// under retired/; the members, the admin and the clients get
	// certificates of the new CA.
	s = step(t, dir, pki.PhaseSwitch, false)
	const stamp = "20250101T000002"
	if err := s.Write(c, dir, stamp); err != nil {
		t.Fatal(err)
	}
	retired := RetiredPath(dir, stamp)
	if !bytes.Equal(oldKey, readFile(t, filepath.Join(retired, "pki", "old-ca", pki.CAKeyFile))) {
		t.Error("the old CA's key is not under retired/…/pki/old-ca")
	}
	if !bytes.Equal(oldMember, readFile(t, filepath.Join(retired, "pki", pki.MemberCertFile("etcd-1")))) {
		t.Error("etcd-1's old certificate is not under retired/")
	}
	if _, err := os.Stat(filepath.Join(dir.PKI(), pki.NextDir)); err == nil {
		t.Error("next/ is left after the switch; its key is the live one now")
	}
	clients, err := ReissueClients(c, dir, stamp)
	if err != nil || !slices.Equal(clients, []string{"app"}) {
		t.Fatalf("ReissueClients = %v, %v", clients, err)
	}
	roll()
	b = bundleOf(t, dir.PKIFile(pki.CACertFile))
	if len(b) != 2 || !b[0].Equal(newCA) || !b[1].Equal(oldCA) {
		t.Fatal("after switch etcd-ca.pem is not new then old")
	}
	for _, f := range []string{dir.PKIFile(pki.MemberCertFile("etcd-1")), dir.PKIFile(pki.MemberCertFile("etcd-3")), dir.PKIFile(pki.AdminCert), dir.ClientCert("app")} {
		if err := chainsTo(t, f, newCA); err != nil {
			t.Errorf("%s after switch: %v", f, err)
		}
	}

	// drop: the new CA alone.
	s = step(t, dir, pki.PhaseDrop, false)
	if err := s.Write(c, dir, "20250101T000003"); err != nil {
		t.Fatal(err)
	}
	roll()
	if b = bundleOf(t, dir.PKIFile(pki.CACertFile)); len(b) != 1 || !b[0].Equal(newCA) {
		t.Fatalf("after drop etcd-ca.pem holds %d CAs, want the new one alone", len(b))
	}

	// Then the rotation is finished: its record goes under retired/ and
	// the next run begins a new one.
	s = step(t, dir, "", false)
	if err := s.Write(c, dir, "20250101T000004"); err == nil {
		t.Error("a finished rotation wrote a phase")
	}
	if err := FinishRotation(dir, "20250101T000004"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(RetiredPath(dir, "20250101T000004"), "pki", pki.RotationFile)); err != nil {
		t.Errorf("the finished record is not retired: %v", err)
	}
	step(t, dir, pki.PhaseTrust, false)
}

// TestRotationGoesOnToSwitchWhenTheOldCAExpired: a trust phase cut short
// by the old CA's expiry has nothing to roll; the step is the switch.
func TestRotationGoesOnToSwitchWhenTheOldCAExpired(t *testing.T) {
	c := spec.Default(1)
	dir := rendered(t, c)
	if err := (RotationStep{Phase: pki.PhaseTrust}).Write(c, dir, "20250101T000001"); err != nil {
		t.Fatal(err)
	}
	// The old CA expired: its pair is replaced by one whose NotAfter
	// has passed.
	cert, key := pkitest.ExpiredCA(t)
	bundle := append(cert, readFile(t, filepath.Join(dir.PKI(), pki.NextDir, pki.CACertFile))...)
	if err := os.WriteFile(dir.PKIFile(pki.CACertFile), bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir.PKIFile(pki.CAKeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := NextRotationStep(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.Phase != pki.PhaseSwitch || s.Resume || !s.Expired {
		t.Fatalf("step %+v, want a switch because the old CA expired", s)
	}
}

// TestRetireLeavesKeepsTheCAAndTheClients: `rotate certs` moves the
// cluster's own certificates aside and nothing else; render then issues
// them anew under the same CA.
func TestRetireLeavesKeepsTheCAAndTheClients(t *testing.T) {
	c := spec.Default(2)
	dir := rendered(t, c)
	ca := readFile(t, dir.PKIFile(pki.CACertFile))
	moved, err := RetireLeaves(c, dir, "20250101T000001")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"pki/admin.pem", "pki/admin-key.pem", "kubernetes/apiserver-etcd-client.pem", "kubernetes/apiserver-etcd-client-key.pem", "pki/etcd-1.pem", "pki/etcd-1-key.pem", "pki/etcd-2.pem", "pki/etcd-2-key.pem"}
	if !slices.Equal(moved, want) {
		t.Errorf("moved %v, want %v", moved, want)
	}
	for _, f := range []string{dir.PKIFile(pki.CACertFile), dir.PKIFile(pki.CAKeyFile), dir.ClientCert("app"), dir.ClientKey("app")} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("%s was moved: %v", f, err)
		}
	}
	res, err := Run(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca, res.PKI.CACert) || !slices.Contains(res.Issued, pki.MemberCertFile("etcd-2")) {
		t.Errorf("render after RetireLeaves: issued %v, same CA %v", res.Issued, bytes.Equal(ca, res.PKI.CACert))
	}
}
