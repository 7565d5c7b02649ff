package render

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// TestInstallClientRetiresThePairItReplaces: adding a client again gives
// it a new pair in OUT/clients (0700, its key 0600); the old pair goes
// under retired/, never written over.
func TestInstallClientRetiresThePairItReplaces(t *testing.T) {
	c := spec.Default(1)
	dir := rendered(t, c)
	old := readFile(t, dir.ClientCert("app"))
	pair, err := pki.IssueClient(c, dir.PKI(), "app")
	if err != nil {
		t.Fatal(err)
	}
	const stamp = "20250101T000001"
	if err := InstallClient(dir, "app", pair, stamp); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pair.Cert, readFile(t, dir.ClientCert("app"))) || !bytes.Equal(pair.Key, readFile(t, dir.ClientKey("app"))) {
		t.Error("the new pair is not in OUT/clients")
	}
	if !bytes.Equal(old, readFile(t, filepath.Join(RetiredPath(dir, stamp), "clients", "app.pem"))) {
		t.Error("the old certificate is not under retired/")
	}
	for path, want := range map[string]os.FileMode{dir.Clients(): 0o700 | os.ModeDir, dir.ClientKey("app"): 0o600, dir.ClientCert("app"): 0o644} {
		if st, err := os.Stat(path); err != nil || st.Mode() != want {
			t.Errorf("%s: mode %v (%v), want %v", path, st.Mode(), err, want)
		}
	}
}

// TestRetireClientMovesItsPairAndSaysWhere: remove moves the pair under
// retired/ and returns where it went; a client with no pair here moves
// nothing.
func TestRetireClientMovesItsPairAndSaysWhere(t *testing.T) {
	dir := rendered(t, spec.Default(1))
	const stamp = "20250101T000001"
	moved, err := RetireClient(dir, "app", stamp)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(RetiredPath(dir, stamp), "clients", "app.pem"), filepath.Join(RetiredPath(dir, stamp), "clients", "app-key.pem")}
	if !slices.Equal(moved, want) {
		t.Fatalf("moved %v, want %v", moved, want)
	}
	for _, p := range want {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(dir.ClientCert("app")); err == nil {
		t.Error("the certificate is still in OUT/clients")
	}
	if moved, err := RetireClient(dir, "other", stamp); err != nil || len(moved) != 0 {
		t.Errorf("a client with no pair: moved %v, %v", moved, err)
	}
}

// TestReissueClientsIssuesEachClientAnew: every client of OUT/clients
// gets a new certificate for the same name from the CA, the old one
// retired.
func TestReissueClientsIssuesEachClientAnew(t *testing.T) {
	c := spec.Default(1)
	dir := rendered(t, c)
	second, err := pki.IssueClient(c, dir.PKI(), "billing")
	if err != nil {
		t.Fatal(err)
	}
	if err := InstallClient(dir, "billing", second, "20250101T000000"); err != nil {
		t.Fatal(err)
	}
	old := readFile(t, dir.ClientCert("app"))
	const stamp = "20250101T000001"
	names, err := ReissueClients(c, dir, stamp)
	if err != nil || !slices.Equal(names, []string{"app", "billing"}) {
		t.Fatalf("ReissueClients = %v, %v", names, err)
	}
	ca := bundleOf(t, dir.PKIFile(pki.CACertFile))[0]
	for _, n := range names {
		cert, err := pki.ParseCert(readFile(t, dir.ClientCert(n)))
		if err != nil {
			t.Fatal(err)
		}
		if cert.Subject.CommonName != n {
			t.Errorf("%s's new certificate has CN %q", n, cert.Subject.CommonName)
		}
		if err := chainsTo(t, dir.ClientCert(n), ca); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
	if bytes.Equal(old, readFile(t, dir.ClientCert("app"))) {
		t.Error("app's certificate was not reissued")
	}
	if !bytes.Equal(old, readFile(t, filepath.Join(RetiredPath(dir, stamp), "clients", "app.pem"))) {
		t.Error("app's old certificate is not under retired/")
	}
}

// TestAddClientWritesOnlyWhatTheClusterTook: the pair is installed only
// after the cluster granted the role; a refusal leaves OUT/clients as it
// was.
func TestAddClientWritesOnlyWhatTheClusterTook(t *testing.T) {
	c := spec.Default(1)
	dir := rendered(t, c)
	old := readFile(t, dir.ClientCert("app"))
	refused := errors.New("etcdserver: permission denied")
	if _, err := AddClient(c, dir, "app", "20250101T000001", func() error { return refused }); !errors.Is(err, refused) {
		t.Fatalf("a refused grant: %v", err)
	}
	if !bytes.Equal(old, readFile(t, dir.ClientCert("app"))) {
		t.Error("a refused grant replaced the pair")
	}
	if _, err := os.Stat(RetiredPath(dir, "20250101T000001")); err == nil {
		t.Error("a refused grant retired the old pair")
	}
	if _, err := AddClient(c, dir, "new", "20250101T000001", func() error { return refused }); err == nil {
		t.Fatal("refused")
	}
	if _, err := os.Stat(dir.ClientCert("new")); err == nil {
		t.Error("a refused client got a certificate")
	}
	granted := false
	pair, err := AddClient(c, dir, "new", "20250101T000002", func() error { granted = true; return nil })
	if err != nil || !granted {
		t.Fatalf("granted: %v (grant ran: %v)", err, granted)
	}
	if !bytes.Equal(pair.Cert, readFile(t, dir.ClientCert("new"))) {
		t.Error("the granted pair is not in OUT/clients")
	}
}
