package pki

import (
	"bytes"
	"crypto/x509"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/cfssl/config"
	"github.com/cloudflare/cfssl/helpers"

	"etcdimg/spec"
)

func write(t *testing.T, dir string, s *Set) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range s.Files() {
		path := filepath.Join(dir, f.Name)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, f.Data, f.Mode); err != nil {
			t.Fatal(err)
		}
	}
}

func mustCert(t *testing.T, pemBytes []byte) *x509.Certificate {
	t.Helper()
	c, err := helpers.ParseCertificatePEM(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestMemberCertificatesVerify(t *testing.T) {
	for _, alg := range []string{spec.KeyECDSAP256, spec.KeyRSA2048} {
		t.Run(alg, func(t *testing.T) {
			c := spec.Default(3)
			c.PKI.KeyAlgorithm = alg
			c.Metrics.TLS = true
			dir := filepath.Join(t.TempDir(), "pki")
			s, err := Ensure(c, dir)
			if err != nil {
				t.Fatal(err)
			}
			write(t, dir, s)
			ca := mustCert(t, s.CACert)
			if KeyAlgorithm(ca) != alg {
				t.Errorf("CA key algorithm = %q, want %q", KeyAlgorithm(ca), alg)
			}
			for _, m := range c.Members {
				cert := mustCert(t, s.Members[m.Name].Cert)
				if err := Verify(ca, cert, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth); err != nil {
					t.Errorf("%s: %v", m.Name, err)
				}
				for _, host := range []string{m.IP, m.Name, "127.0.0.1", "localhost"} {
					if err := cert.VerifyHostname(host); err != nil {
						t.Errorf("%s: not valid for %s: %v", m.Name, host, err)
					}
				}
				for _, other := range c.Members {
					if other.Name != m.Name && cert.VerifyHostname(other.IP) == nil {
						t.Errorf("%s: certificate is also valid for %s", m.Name, other.IP)
					}
				}
				if cert.Subject.CommonName != m.Name || KeyAlgorithm(cert) != alg {
					t.Errorf("%s: CN %q, key %q", m.Name, cert.Subject.CommonName, KeyAlgorithm(cert))
				}
				// openssl agrees, for both purposes.
				for _, purpose := range []string{"sslserver", "sslclient"} {
					out, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(dir, CACertFile),
						"-purpose", purpose, filepath.Join(dir, MemberCertFile(m.Name))).CombinedOutput()
					if err != nil || !strings.Contains(string(out), ": OK") {
						t.Errorf("openssl verify -purpose %s %s: %v %s", purpose, m.Name, err, out)
					}
				}
			}
			admin := mustCert(t, s.Admin.Cert)
			if err := Verify(ca, admin, x509.ExtKeyUsageClientAuth); err != nil {
				t.Errorf("admin: %v", err)
			}
			if Verify(ca, admin, x509.ExtKeyUsageServerAuth) == nil {
				t.Errorf("admin certificate is usable as a server certificate")
			}
			if admin.Subject.CommonName != AdminCN {
				t.Errorf("admin CN = %q", admin.Subject.CommonName)
			}
			// The Kubernetes API server's and the scraper's are
			// client-only too, each under its own CN.
			if s.Prometheus == nil {
				t.Fatal("metrics.tls is on but no Prometheus pair was issued")
			}
			for cn, p := range map[string]Pair{spec.KubeAPIServerCN: s.Kube, spec.PrometheusCN: *s.Prometheus} {
				cert := mustCert(t, p.Cert)
				if cert.Subject.CommonName != cn || Verify(ca, cert, x509.ExtKeyUsageClientAuth) != nil || Verify(ca, cert, x509.ExtKeyUsageServerAuth) == nil || len(cert.DNSNames)+len(cert.IPAddresses) != 0 {
					t.Errorf("%s: CN %q, SANs %v %v: want a client-only certificate with no hosts", cn, cert.Subject.CommonName, cert.DNSNames, cert.IPAddresses)
				}
			}
		})
	}
}

func TestPrivateKeysAre0600(t *testing.T) {
	s, err := Ensure(spec.Default(3), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range s.Files() {
		isKey := strings.HasSuffix(f.Name, "-key.pem")
		if isKey && f.Mode != 0o600 || !isKey && f.Mode != 0o644 {
			t.Errorf("%s mode %o", f.Name, f.Mode)
		}
		if isKey != bytes.Contains(f.Data, []byte("PRIVATE KEY")) {
			t.Errorf("%s: private key content and name disagree", f.Name)
		}
	}
}

func TestCAConfigIsTheRunbookPolicy(t *testing.T) {
	s, err := Ensure(spec.Default(1), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.LoadConfig(s.CAConfig)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Signing.Profiles[ProfileEtcd]
	if p == nil || p.ExpiryString != "87600h" {
		t.Fatalf("profile etcd = %+v", p)
	}
	want := []string{"signing", "key encipherment", "server auth", "client auth"}
	if !slices.Equal(p.Usage, want) {
		t.Errorf("usages = %v, want %v", p.Usage, want)
	}
	cert := mustCert(t, s.Members["etcd-1"].Cert)
	if cert.KeyUsage&x509.KeyUsageDigitalSignature == 0 || cert.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		t.Errorf("key usage %v", cert.KeyUsage)
	}
}

func TestRerunReusesEverything(t *testing.T) {
	c := spec.Default(3)
	dir := t.TempDir()
	first, err := Ensure(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	write(t, dir, first)
	second, err := Ensure(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(second.Issued) != 0 {
		t.Errorf("rerun issued %v", second.Issued)
	}
	if !bytes.Equal(first.CACert, second.CACert) || !bytes.Equal(first.CAKey, second.CAKey) {
		t.Errorf("rerun changed the CA")
	}
	for n := range first.Members {
		if !bytes.Equal(first.Members[n].Cert, second.Members[n].Cert) {
			t.Errorf("rerun reissued %s", n)
		}
	}

	// A changed IP reissues that member only; a new member gets a pair.
	c.Members[1].IP = "192.168.2.62"
	c.Members = append(c.Members, spec.Member{Name: "etcd-4", IP: "192.168.2.54"})
	third, err := Ensure(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"etcd-2.pem", "etcd-2-key.pem", "etcd-4.pem", "etcd-4-key.pem"}
	if !slices.Equal(third.Issued, want) {
		t.Errorf("issued %v, want %v", third.Issued, want)
	}
	if got := mustCert(t, third.Members["etcd-2"].Cert).IPAddresses; !slices.ContainsFunc(got, func(ip net.IP) bool { return ip.String() == "192.168.2.62" }) {
		t.Errorf("etcd-2 IPs %v", got)
	}
	if !bytes.Equal(first.CACert, third.CACert) {
		t.Errorf("a member change replaced the CA")
	}
}

// TestForeignOrBrokenCAIsRefused: a CA that cannot be used is an error,
// never silently replaced.
func TestForeignOrBrokenCAIsRefused(t *testing.T) {
	c := spec.Default(1)
	other, err := Ensure(c, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		setup func(dir string)
		want  string
	}{
		{"key of another CA", func(dir string) {
			os.WriteFile(filepath.Join(dir, CAKeyFile), other.CAKey, 0o600)
		}, "is not the key of"},
		{"key missing", func(dir string) { os.Remove(filepath.Join(dir, CAKeyFile)) }, "etcd-ca-key.pem is missing"},
		{"cert missing", func(dir string) { os.Remove(filepath.Join(dir, CACertFile)) }, "etcd-ca.pem is missing"},
		{"cert garbage", func(dir string) { os.WriteFile(filepath.Join(dir, CACertFile), []byte("nope"), 0o644) }, "is not a PEM certificate"},
		{"cert not a CA", func(dir string) {
			os.WriteFile(filepath.Join(dir, CACertFile), other.Members["etcd-1"].Cert, 0o644)
		}, "is not a CA certificate"},
		{"unreadable", func(dir string) {
			p := filepath.Join(dir, CACertFile)
			os.Remove(p)
			os.Mkdir(p, 0o700)
		}, "read CA"},
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
			if _, err := Ensure(c, dir); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			} else if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			if after := snapshot(t, dir); after != before {
				t.Errorf("refusal changed the directory")
			}
		})
	}
}

func snapshot(t *testing.T, dir string) string {
	var b strings.Builder
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		b.WriteString(e.Name())
		b.Write(data)
	}
	return b.String()
}

func TestContainsKey(t *testing.T) {
	s, err := Ensure(spec.Default(1), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if !ContainsKey(append([]byte("x"), s.CAKey...), s.CAKey) {
		t.Error("PEM key not found")
	}
	escaped := []byte(strings.ReplaceAll(string(s.CAKey), "\n", "%0A"))
	if !ContainsKey(escaped, s.CAKey) {
		t.Error("URL-escaped key not found")
	}
	if ContainsKey(s.Members["etcd-1"].Key, s.CAKey) || ContainsKey(s.CACert, s.CAKey) {
		t.Error("false positive")
	}
}

// TestSpecChangesReachTheCertificates: a changed certLifetime reissues
// the leaves; a kept CA that ends sooner than the spec asks caps every
// leaf at its own end and says so; a keyAlgorithm the kept CA does not
// have gives leaves of that algorithm and a warning; a CA within 30 days
// of its end is warned about.
func TestSpecChangesReachTheCertificates(t *testing.T) {
	dir := t.TempDir()
	c := spec.Default(1)
	c.PKI.CALifetime = spec.Duration(40 * 24 * time.Hour)
	c.PKI.CertLifetime = spec.Duration(20 * 24 * time.Hour)
	first, err := Ensure(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	write(t, dir, first)
	ca := mustCert(t, first.CACert)

	// Longer lifetimes than the kept CA has left: leaves end with the CA.
	c.PKI.CALifetime = spec.Duration(87600 * time.Hour)
	c.PKI.CertLifetime = spec.Duration(8760 * time.Hour)
	longer, err := Ensure(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(longer.Issued, MemberCertFile("etcd-1")) {
		t.Fatalf("a changed certLifetime did not reissue: issued %v", longer.Issued)
	}
	leaf := mustCert(t, longer.Members["etcd-1"].Cert)
	if leaf.NotAfter.After(ca.NotAfter) || ca.NotAfter.Sub(leaf.NotAfter) > time.Hour {
		t.Errorf("leaf ends %s, CA %s: want the CA's end", leaf.NotAfter, ca.NotAfter)
	}
	if len(longer.Warnings) != 1 || !strings.Contains(longer.Warnings[0], "pki.caLifetime is 87600h, but the existing CA was made for 960h and is kept") {
		t.Errorf("warnings %q", longer.Warnings)
	}
	write(t, dir, longer)
	if again, _ := Ensure(c, dir); len(again.Issued) != 0 {
		t.Errorf("a leaf capped at its CA's end was reissued: %v", again.Issued)
	}

	// Another key algorithm: RSA leaves, the ECDSA CA kept, a warning.
	c.PKI.KeyAlgorithm = spec.KeyRSA2048
	rsaSet, err := Ensure(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	if KeyAlgorithm(mustCert(t, rsaSet.Members["etcd-1"].Cert)) != spec.KeyRSA2048 || !bytes.Equal(rsaSet.CACert, first.CACert) {
		t.Error("leaves do not follow keyAlgorithm, or the CA changed")
	}
	if !slices.ContainsFunc(rsaSet.Warnings, func(w string) bool { return strings.Contains(w, "the existing CA is ecdsa-p256 and is kept") }) {
		t.Errorf("warnings %q", rsaSet.Warnings)
	}

	// A CA that ends within 30 days.
	if w := caWarnings(c, ca, ca.NotAfter.Add(-10*24*time.Hour)); !slices.ContainsFunc(w, func(w string) bool { return strings.Contains(w, "in 10 days") }) {
		t.Errorf("near the end: %q", w)
	}
}
