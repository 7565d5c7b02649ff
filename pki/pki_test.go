package pki

import (
	"bytes"
	"crypto/x509"
	"fmt"
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

	"etcdimg/internal/pkitest"
	"etcdimg/internal/spec"
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
		isKey := strings.HasSuffix(f.Name, "-key.pem") || f.Name == ImageSigningKey
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
	// The image-signing key is found the same ways, and its public key
	// and the CA key do not pass for it.
	if !ContainsKey(append([]byte("x"), s.SigningKey...), s.SigningKey) || !ContainsKey([]byte(strings.ReplaceAll(string(s.SigningKey), "\n", "%0A")), s.SigningKey) {
		t.Error("image-signing key not found")
	}
	if ContainsKey(s.SigningPub, s.SigningKey) || ContainsKey(s.CAKey, s.SigningKey) || ContainsKey(s.SigningKey, s.CAKey) {
		t.Error("image-signing key: false positive")
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

// TestCARotationPhasesKeepEveryoneTrusted walks a CA rotation through its
// three phases on disk and checks, with crypto/x509 and openssl, what each
// phase's bundle trusts: old and new CA during trust and switch, the
// certificates reissued under the new CA at switch, and at drop a
// certificate of the old CA refused.
func TestCARotationPhasesKeepEveryoneTrusted(t *testing.T) {
	c := spec.Default(3)
	dir := filepath.Join(t.TempDir(), "pki")
	apply := func(files []File, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			p := filepath.Join(dir, f.Name)
			os.MkdirAll(filepath.Dir(p), 0o700)
			if err := os.WriteFile(p, f.Data, f.Mode); err != nil {
				t.Fatal(err)
			}
		}
	}
	s0, err := Ensure(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	write(t, dir, s0)
	oldCA := mustCert(t, s0.CACert)
	oldMember := filepath.Join(t.TempDir(), "old-etcd-1.pem")
	os.WriteFile(oldMember, s0.Members["etcd-1"].Cert, 0o644)
	// verify checks a certificate file against the current bundle, both
	// with crypto/x509 and with openssl.
	verify := func(certFile string) (x509err, opensslErr error) {
		bundleBytes, _ := os.ReadFile(filepath.Join(dir, CACertFile))
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(bundleBytes)
		b, _ := os.ReadFile(certFile)
		_, x509err = mustCert(t, b).Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		out, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(dir, CACertFile), certFile).CombinedOutput()
		if err != nil {
			opensslErr = fmt.Errorf("%v: %s", err, out)
		}
		return
	}
	if r, err := LoadRotation(dir); err != nil || r != nil {
		t.Fatalf("no rotation yet: %v %v", r, err)
	}

	// trust: the bundle holds old then new; the leaves are kept.
	apply(RotateTrust(c, dir))
	r, err := LoadRotation(dir)
	if err != nil || r == nil || r.Phase != PhaseTrust || r.Rolled {
		t.Fatalf("after trust: %+v %v", r, err)
	}
	s1, err := Ensure(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(s1.Issued) != 0 || !bytes.Equal(s1.Members["etcd-1"].Cert, s0.Members["etcd-1"].Cert) {
		t.Errorf("the trust phase reissued %v", s1.Issued)
	}
	b1, _ := ParseBundle(s1.CACert)
	if len(b1) != 2 || !b1[0].Equal(oldCA) {
		t.Fatalf("trust bundle: %d certificates, first is the old CA: %v", len(b1), len(b1) > 0 && b1[0].Equal(oldCA))
	}
	newCA := b1[1]
	if _, err := RotateTrust(c, dir); err == nil {
		t.Error("a second trust phase over a bundle was accepted")
	}

	// switch: the new CA signs; every leaf is reissued under it and the
	// old ones still verify against the bundle.
	apply(RotateSwitch(dir, *r))
	s2, err := Ensure(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	if b2, _ := ParseBundle(s2.CACert); len(b2) != 2 || !b2[0].Equal(newCA) || !b2[1].Equal(oldCA) {
		t.Fatal("switch bundle is not new then old")
	}
	for _, p := range append([]Pair{s2.Admin, s2.Kube}, s2.Members["etcd-1"], s2.Members["etcd-3"]) {
		if err := Verify(newCA, mustCert(t, p.Cert), x509.ExtKeyUsageClientAuth); err != nil {
			t.Errorf("a certificate after switch does not chain to the new CA: %v", err)
		}
	}
	if ic, err := IssueClient(c, dir, "app"); err != nil || Verify(newCA, mustCert(t, ic.Cert), x509.ExtKeyUsageClientAuth) != nil {
		t.Errorf("a client issued after switch: %v", err)
	}
	write(t, dir, s2)
	if e1, e2 := verify(oldMember); e1 != nil || e2 != nil {
		t.Errorf("during switch a certificate of the old CA is refused: %v / %v", e1, e2)
	}

	// drop: the new CA alone; the old CA's certificate is refused, the
	// new ones verify.
	r, _ = LoadRotation(dir)
	apply(RotateDrop(dir, *r))
	s3, err := Ensure(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(s3.Issued) != 0 {
		t.Errorf("drop reissued %v", s3.Issued)
	}
	if e1, e2 := verify(oldMember); e1 == nil || e2 == nil {
		t.Errorf("after drop a certificate of the old CA verifies: %v / %v", e1, e2)
	}
	if e1, e2 := verify(filepath.Join(dir, MemberCertFile("etcd-2"))); e1 != nil || e2 != nil {
		t.Errorf("after drop a new certificate is refused: %v / %v", e1, e2)
	}
}

// TestCARotationFinishesAfterTheOldCAExpired: the old CA expires between
// the trust and the switch phase; switch and drop still run, and the
// certificates issued after them chain to the new CA (issue 21: the
// tool refused the expired CA and could not reach the new one in next/).
// Beginning a rotation, or issuing, from an expired CA stays refused.
func TestCARotationFinishesAfterTheOldCAExpired(t *testing.T) {
	c := spec.Default(3)
	dir := filepath.Join(t.TempDir(), "pki")
	oldCert, oldKey := pkitest.ExpiredCA(t)
	newCert, newKey, err := newCA(c)
	if err != nil {
		t.Fatal(err)
	}
	// The directory as the trust phase left it, rolled out.
	for name, f := range map[string]struct {
		b    []byte
		mode os.FileMode
	}{
		CACertFile:                         {bundle(oldCert, newCert), 0o644},
		CAKeyFile:                          {oldKey, 0o600},
		filepath.Join(NextDir, CACertFile): {newCert, 0o644},
		filepath.Join(NextDir, CAKeyFile):  {newKey, 0o600},
		RotationFile:                       {Rotation{Phase: PhaseTrust, Rolled: true}.File().Data, 0o644},
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o700)
		if err := os.WriteFile(filepath.Join(dir, name), f.b, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	apply := func(files []File, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("with the old CA expired: %v", err)
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(dir, f.Name), f.Data, f.Mode); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := Ensure(c, dir); err == nil || !strings.Contains(err.Error(), "run `etcdimg rotate ca`") {
		t.Errorf("render between the phases: %v, want it to point at the rotation's next phase", err)
	}
	if expired, err := CAExpired(dir); err != nil || !expired {
		t.Errorf("CAExpired before switch = %v, %v; want true", expired, err)
	}
	r, err := LoadRotation(dir)
	if err != nil {
		t.Fatal(err)
	}
	apply(RotateSwitch(dir, *r))
	if expired, err := CAExpired(dir); err != nil || expired {
		t.Errorf("CAExpired after switch = %v, %v; want false", expired, err)
	}
	s, err := Ensure(c, dir)
	if err != nil {
		t.Fatalf("render after switch: %v", err)
	}
	newCA := mustCert(t, newCert)
	for name, p := range map[string]Pair{"admin": s.Admin, "etcd-1": s.Members["etcd-1"], "etcd-3": s.Members["etcd-3"]} {
		if err := Verify(newCA, mustCert(t, p.Cert), x509.ExtKeyUsageClientAuth); err != nil {
			t.Errorf("%s after switch does not chain to the new CA: %v", name, err)
		}
	}
	write(t, dir, s)
	r, _ = LoadRotation(dir)
	apply(RotateDrop(dir, *r))
	if b, _ := ParseBundle(mustRead(t, filepath.Join(dir, CACertFile))); len(b) != 1 || !b[0].Equal(newCA) {
		t.Errorf("after drop etcd-ca.pem holds %d certificates, want the new CA alone", len(b))
	}
	if _, err := Ensure(c, dir); err != nil {
		t.Errorf("render after drop: %v", err)
	}

	// No rotation begins from, and nothing is issued by, an expired CA.
	other := filepath.Join(t.TempDir(), "pki")
	os.MkdirAll(other, 0o700)
	os.WriteFile(filepath.Join(other, CACertFile), oldCert, 0o644)
	os.WriteFile(filepath.Join(other, CAKeyFile), oldKey, 0o600)
	if _, err := RotateTrust(c, other); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("trust from an expired CA: %v", err)
	}
	if _, err := IssueClient(c, other, "app"); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("a client from an expired CA: %v", err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
