package render

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// TestMemberNamedLikeAClientIsRefused: a new member may not take an
// application client's name (clients/etcd-4.pem + member etcd-4):
// members hold the root role, so the client's certificate would become
// root and be let onto the peer port. Nothing is written (issue 21).
func TestMemberNamedLikeAClientIsRefused(t *testing.T) {
	dir := outdir.Layout(filepath.Join(t.TempDir(), "out"))
	three := spec.Default(3)
	if _, err := Run(three, dir); err != nil {
		t.Fatal(err)
	}
	pair, err := pki.IssueClient(three, dir.PKI(), "etcd-4")
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(dir.Clients(), 0o700)
	os.WriteFile(dir.ClientCert("etcd-4"), pair.Cert, 0o644)
	os.WriteFile(dir.ClientKey("etcd-4"), pair.Key, 0o600)
	before, _ := os.ReadFile(dir.Spec())

	_, err = Run(spec.Default(4), dir)
	if err == nil || !strings.Contains(err.Error(), `members[3].name "etcd-4" is an application client's name`) || !strings.Contains(err.Error(), "etcdimg client remove etcd-4") || strings.Contains(err.Error(), "\n") {
		t.Errorf("a member named like a client: %v", err)
	}
	if after, _ := os.ReadFile(dir.Spec()); string(after) != string(before) {
		t.Error("the refused run changed the spec")
	}
	for _, p := range []string{dir.Ignition("etcd-4"), dir.PKIFile(pki.MemberCertFile("etcd-4"))} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("the refused run wrote %s", p)
		}
	}
	// A client of another name does not stand in the way.
	os.Rename(dir.ClientCert("etcd-4"), dir.ClientCert("app"))
	if _, err := Run(spec.Default(4), dir); err != nil {
		t.Errorf("with a client called app: %v", err)
	}
}
