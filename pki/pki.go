// Package pki owns the cluster's certificate authority and the certificates
// it signs, made with the cfssl library under the runbook's signing policy
// (ca-config.json, profile "etcd") and file names.
//
// Ensure reads what already exists in a pki directory and returns the full
// set in memory: an existing CA is reused byte for byte and never replaced,
// a member certificate is issued only when it is missing or no longer fits
// its member. Beside the CA it keeps the image-signing key (ImageSigningKey),
// made once and never replaced. pki never writes: the caller writes the
// returned files. The CA private key and the image-signing key are
// returned only for that write; nothing else in etcdimg is handed them
// (a signer reads the image-signing key with LoadImageSigner).
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cloudflare/cfssl/config"
	"github.com/cloudflare/cfssl/csr"
	"github.com/cloudflare/cfssl/helpers"
	"github.com/cloudflare/cfssl/initca"
	cflog "github.com/cloudflare/cfssl/log"
	"github.com/cloudflare/cfssl/signer"
	"github.com/cloudflare/cfssl/signer/local"

	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
)

// File names inside the pki directory, as in the runbook.
const (
	CACertFile   = "etcd-ca.pem"
	CAKeyFile    = "etcd-ca-key.pem"
	CAConfigFile = "ca-config.json"
	AdminCert    = "admin.pem"
	AdminKey     = "admin-key.pem"
)

// The Kubernetes API server's pair lives in the kubernetes folder beside
// the pki directory, under kubeadm's names for it; its paths here are
// relative to the pki directory.
var (
	KubeClientCert = filepath.Join("..", outdir.KubeDir, "apiserver-etcd-client.pem")
	KubeClientKey  = filepath.Join("..", outdir.KubeDir, "apiserver-etcd-client-key.pem")
)

// The metrics scraper's pair, issued when the spec's metrics.tls is on.
const (
	PrometheusCert = "prometheus.pem"
	PrometheusKey  = "prometheus-key.pem"
)

// MemberCertFile and MemberKeyFile name a member's pair: etcd-1.pem,
// etcd-1-key.pem.
func MemberCertFile(name string) string { return name + ".pem" }
func MemberKeyFile(name string) string  { return name + "-key.pem" }

// Signing profiles in ca-config.json. "etcd" is the runbook's; "client" is
// the admin certificate's, which must not be usable as a server.
const (
	ProfileEtcd   = "etcd"
	ProfileClient = "client"
)

// AdminCN is the admin certificate's common name. etcd maps a client
// certificate's CN to a user when auth is enabled; "root" makes the admin
// certificate etcd's root user then.
const AdminCN = layout.AdminCN

// renewBefore is how close to expiry a certificate is reissued.
const renewBefore = 30 * 24 * time.Hour

func init() {
	// cfssl logs every request at INFO to stderr; etcdimg reports for itself.
	cflog.Level = cflog.LevelFatal
}

// Pair is a PEM certificate and its PEM private key.
type Pair struct {
	Cert, Key []byte
}

// Set is the cluster's whole PKI.
type Set struct {
	CACert   []byte
	CAKey    []byte // only for writing to the build directory
	CAConfig []byte
	Members  map[string]Pair
	Admin    Pair
	// Kube is the Kubernetes API server's client pair (CN
	// spec.KubeAPIServerCN, client authentication only).
	Kube Pair
	// Prometheus is the metrics scraper's client pair, when the spec's
	// metrics.tls is on (CN spec.PrometheusCN, no etcd user).
	Prometheus *Pair
	// SigningKey and SigningPub are the image-signing pair's PEM files
	// (ImageSigningKey, ImageSigningPub); the key only for writing to
	// the build directory.
	SigningKey, SigningPub []byte
	// Issued lists the files created by this call, for the operator.
	Issued []string
	// Warnings say what the spec asks that the kept CA cannot give, and
	// when the CA is close to its end.
	Warnings []string
}

// File is one file of the pki directory.
type File struct {
	Name string
	Data []byte
	Mode fs.FileMode
}

// Files lists the set as files, private keys 0600, in a fixed order.
func (s *Set) Files() []File {
	files := []File{
		{CACertFile, s.CACert, 0o644},
		{CAKeyFile, s.CAKey, 0o600},
		{CAConfigFile, s.CAConfig, 0o644},
		{ImageSigningKey, s.SigningKey, 0o600},
		{ImageSigningPub, s.SigningPub, 0o644},
		{AdminCert, s.Admin.Cert, 0o644},
		{AdminKey, s.Admin.Key, 0o600},
		{KubeClientCert, s.Kube.Cert, 0o644},
		{KubeClientKey, s.Kube.Key, 0o600},
	}
	if s.Prometheus != nil {
		files = append(files, File{PrometheusCert, s.Prometheus.Cert, 0o644}, File{PrometheusKey, s.Prometheus.Key, 0o600})
	}
	names := make([]string, 0, len(s.Members))
	for n := range s.Members {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		p := s.Members[n]
		files = append(files, File{MemberCertFile(n), p.Cert, 0o644}, File{MemberKeyFile(n), p.Key, 0o600})
	}
	return files
}

// Ensure returns the PKI for c, reusing what dir already holds. dir may not
// exist. It never writes to dir.
func Ensure(c *spec.Cluster, dir string) (*Set, error) {
	s := &Set{Members: map[string]Pair{}}
	var err error
	if s.CAConfig, err = caConfigJSON(c); err != nil {
		return nil, err
	}

	ca, caKey, certPEM, keyPEM, err := loadCA(dir)
	switch {
	case err != nil:
		return nil, err
	case ca == nil:
		if s.CACert, s.CAKey, err = newCA(c); err != nil {
			return nil, err
		}
		s.Issued = append(s.Issued, CACertFile, CAKeyFile)
		if ca, caKey, err = parseCA(s.CACert, s.CAKey); err != nil {
			return nil, err
		}
	default:
		s.CACert, s.CAKey = certPEM, keyPEM
		s.Warnings = caWarnings(c, ca, time.Now())
	}
	sgn, err := newSigner(s.CAConfig, ca, caKey)
	if err != nil {
		return nil, err
	}
	if err := ensureImageSigner(s, dir); err != nil {
		return nil, err
	}

	// Every certificate the CA signs: the admin's, then one per member.
	type slot struct {
		want              leaf
		certFile, keyFile string
		set               func(Pair)
	}
	leaves := []slot{{
		want:     leaf{cn: AdminCN, profile: ProfileClient},
		certFile: AdminCert, keyFile: AdminKey,
		set: func(p Pair) { s.Admin = p },
	}, {
		want:     leaf{cn: spec.KubeAPIServerCN, profile: ProfileClient},
		certFile: KubeClientCert, keyFile: KubeClientKey,
		set: func(p Pair) { s.Kube = p },
	}}
	if c.Metrics.TLS {
		leaves = append(leaves, slot{
			want:     leaf{cn: spec.PrometheusCN, profile: ProfileClient},
			certFile: PrometheusCert, keyFile: PrometheusKey,
			set: func(p Pair) { s.Prometheus = &p },
		})
	}
	for _, m := range c.Members {
		leaves = append(leaves, slot{
			want:     leaf{cn: m.Name, hosts: MemberHosts(m), profile: ProfileEtcd},
			certFile: MemberCertFile(m.Name), keyFile: MemberKeyFile(m.Name),
			set: func(p Pair) { s.Members[m.Name] = p },
		})
	}
	for _, l := range leaves {
		p, ok := existingLeaf(dir, l.certFile, l.keyFile, ca, l.want, c.PKI.KeyAlgorithm, c.PKI.CertLifetime.D())
		if !ok {
			if p, err = issue(sgn, ca, l.want, c.PKI.KeyAlgorithm, c.PKI.CertLifetime.D()); err != nil {
				return nil, fmt.Errorf("pki: issue %s: %w", l.certFile, err)
			}
			s.Issued = append(s.Issued, l.certFile, l.keyFile)
		}
		l.set(p)
	}
	return s, nil
}

// MemberHosts is what a member's certificate is valid for: its IP, its
// name, and loopback by address and by name.
func MemberHosts(m spec.Member) []string {
	return []string{m.IP, m.Name, "127.0.0.1", "localhost"}
}

type leaf struct {
	cn      string
	hosts   []string
	profile string
}

func keyRequest(alg string) *csr.KeyRequest {
	if alg == spec.KeyRSA2048 {
		return &csr.KeyRequest{A: "rsa", S: 2048}
	}
	return &csr.KeyRequest{A: "ecdsa", S: 256}
}

func newCA(c *spec.Cluster) (cert, key []byte, err error) {
	req := &csr.CertificateRequest{
		CN:         "etcd-ca",
		Names:      []csr.Name{{O: "etcdimg", OU: c.Name}},
		KeyRequest: keyRequest(c.PKI.KeyAlgorithm),
		CA:         &csr.CAConfig{Expiry: c.PKI.CALifetime.D().String()},
	}
	cert, _, key, err = initca.New(req)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: new CA: %w", err)
	}
	return cert, key, nil
}

// newSigner is the CA's signer under the policy of ca-config.json.
func newSigner(caConfig []byte, ca *x509.Certificate, caKey crypto.Signer) (*local.Signer, error) {
	policy, err := config.LoadConfig(caConfig)
	if err != nil {
		return nil, fmt.Errorf("pki: load %s: %w", CAConfigFile, err)
	}
	sgn, err := local.NewSigner(caKey, ca, signer.DefaultSigAlgo(caKey), policy.Signing)
	if err != nil {
		return nil, fmt.Errorf("pki: signer: %w", err)
	}
	return sgn, nil
}

// caWarnings compares a kept CA with the spec: its key algorithm and its
// lifetime are the CA's own (a CA is never replaced), and its end is
// every certificate's end.
func caWarnings(c *spec.Cluster, ca *x509.Certificate, now time.Time) []string {
	var w []string
	if alg := KeyAlgorithm(ca); alg != c.PKI.KeyAlgorithm {
		w = append(w, fmt.Sprintf("pki: pki.keyAlgorithm is %s, but the existing CA is %s and is kept (a CA is never replaced): the certificates it signs use %s keys; to change the CA, move the pki directory aside and rebuild every member", c.PKI.KeyAlgorithm, alg, c.PKI.KeyAlgorithm))
	}
	if life := ca.NotAfter.Sub(ca.NotBefore); (life - c.PKI.CALifetime.D()).Abs() > 48*time.Hour {
		w = append(w, fmt.Sprintf("pki: pki.caLifetime is %s, but the existing CA was made for %s and is kept, until %s", c.PKI.CALifetime, spec.Duration(life.Round(time.Hour)), ca.NotAfter.Format(time.DateOnly)))
	}
	if left := ca.NotAfter.Sub(now); left < renewBefore {
		w = append(w, fmt.Sprintf("pki: the CA expires on %s, in %d days: every certificate it signed stops working then; make a new CA (move the pki directory aside) and rebuild and roll every member before that", ca.NotAfter.Format(time.DateOnly), int(left.Hours()/24)))
	}
	return w
}

// leafNotAfter is when a certificate issued now ends: its lifetime from
// the spec, but never after its CA.
func leafNotAfter(ca *x509.Certificate, lifetime time.Duration, now time.Time) time.Time {
	return minTime(now.Add(lifetime), ca.NotAfter)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func issue(s *local.Signer, ca *x509.Certificate, l leaf, alg string, lifetime time.Duration) (Pair, error) {
	req := &csr.CertificateRequest{
		CN:         l.cn,
		Names:      []csr.Name{{O: "etcdimg"}},
		Hosts:      l.hosts,
		KeyRequest: keyRequest(alg),
	}
	csrPEM, key, err := csr.ParseRequest(req)
	if err != nil {
		return Pair{}, err
	}
	cert, err := s.Sign(signer.SignRequest{Hosts: l.hosts, Request: string(csrPEM), Profile: l.profile, NotAfter: leafNotAfter(ca, lifetime, time.Now())})
	if err != nil {
		return Pair{}, err
	}
	return Pair{Cert: cert, Key: key}, nil
}

// loadCA reads an existing CA. It returns nil, nil, nil when there is none,
// and an error when what is there cannot be used as this cluster's CA: a
// CA is never silently replaced, and an expired one signs nothing.
func loadCA(dir string) (ca *x509.Certificate, key crypto.Signer, certPEM, keyPEM []byte, err error) {
	return readCA(dir, true)
}

// readCA is loadCA; without signing, an expired CA is read too: a CA
// rotation's switch and drop phases only move it aside, and must run
// even when the old CA expired after the trust phase.
func readCA(dir string, signing bool) (ca *x509.Certificate, key crypto.Signer, certPEM, keyPEM []byte, err error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	fail := func(err error) (*x509.Certificate, crypto.Signer, []byte, []byte, error) {
		return nil, nil, nil, nil, err
	}
	switch {
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		return fail(nil)
	case certErr != nil && !errors.Is(certErr, fs.ErrNotExist):
		return fail(fmt.Errorf("pki: read CA %s: %w; fix its permissions, or move the pki directory aside to start a new CA", certPath, certErr))
	case keyErr != nil && !errors.Is(keyErr, fs.ErrNotExist):
		return fail(fmt.Errorf("pki: read CA key %s: %w; fix its permissions, or move the pki directory aside to start a new CA", keyPath, keyErr))
	case certErr != nil:
		return fail(fmt.Errorf("pki: %s exists but %s is missing; put the CA certificate back, or move the pki directory aside to start a new CA", keyPath, certPath))
	case keyErr != nil:
		return fail(fmt.Errorf("pki: %s exists but %s is missing; put the CA key back, or move the pki directory aside to start a new CA", certPath, keyPath))
	}
	ca, key, err = parseCA(certPEM, keyPEM)
	if err != nil {
		return fail(fmt.Errorf("%w (in %s); restore the original CA, or move the pki directory aside to start a new CA", err, dir))
	}
	if signing && time.Now().After(ca.NotAfter) {
		if r, _ := LoadRotation(dir); r != nil && r.Phase == PhaseTrust {
			return fail(fmt.Errorf("pki: the CA in %s expired on %s, during a CA rotation: run `etcdimg rotate ca` to switch to the new CA waiting in %s", dir, ca.NotAfter.Format(time.DateOnly), filepath.Join(dir, NextDir)))
		}
		return fail(fmt.Errorf("pki: the CA in %s expired on %s; move the pki directory aside to start a new CA and rebuild every member", dir, ca.NotAfter.Format(time.DateOnly)))
	}
	return ca, key, certPEM, keyPEM, nil
}

// parseCA reads the CA: the first certificate of certPEM, whose key
// keyPEM must be. More certificates may follow it, each a CA: during a CA
// rotation etcd-ca.pem is the bundle every member and client trusts, the
// signing CA first.
func parseCA(certPEM, keyPEM []byte) (*x509.Certificate, crypto.Signer, error) {
	bundle, err := ParseBundle(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %s is not a PEM certificate (%w)", CACertFile, err)
	}
	for _, c := range bundle {
		if !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0 {
			return nil, nil, fmt.Errorf("pki: %s is not a CA certificate (CN %q)", CACertFile, c.Subject.CommonName)
		}
	}
	ca := bundle[0]
	key, err := helpers.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %s is not a PEM private key", CAKeyFile)
	}
	if !publicKeysEqual(key.Public(), ca.PublicKey) {
		return nil, nil, fmt.Errorf("pki: %s is not the key of %s (a foreign CA pair)", CAKeyFile, CACertFile)
	}
	return ca, key, nil
}

// existingLeaf returns the pair already on disk if it still fits: it parses,
// the key matches, it chains to ca for its profile's usages, it names the
// same subject and hosts, uses the spec's key algorithm and lifetime,
// ends no later than its CA, and is not near expiry.
func existingLeaf(dir, certFile, keyFile string, ca *x509.Certificate, want leaf, alg string, lifetime time.Duration) (Pair, bool) {
	certPEM, err1 := os.ReadFile(filepath.Join(dir, certFile))
	keyPEM, err2 := os.ReadFile(filepath.Join(dir, keyFile))
	if err1 != nil || err2 != nil {
		return Pair{}, false
	}
	cert, err := helpers.ParseCertificatePEM(certPEM)
	if err != nil {
		return Pair{}, false
	}
	key, err := helpers.ParsePrivateKeyPEM(keyPEM)
	if err != nil || !publicKeysEqual(key.Public(), cert.PublicKey) {
		return Pair{}, false
	}
	if KeyAlgorithm(cert) != alg {
		return Pair{}, false
	}
	usages := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if want.profile == ProfileEtcd {
		usages = append(usages, x509.ExtKeyUsageServerAuth)
	}
	if err := Verify(ca, cert, usages...); err != nil {
		return Pair{}, false
	}
	if cert.Subject.CommonName != want.cn || !sameHosts(cert, want.hosts) {
		return Pair{}, false
	}
	if time.Until(cert.NotAfter) < renewBefore || cert.NotAfter.After(ca.NotAfter) {
		return Pair{}, false
	}
	// A changed pki.certLifetime reissues, unless the certificate ends
	// with its CA (it could not be given more).
	capped := cert.NotAfter.Sub(ca.NotAfter).Abs() < time.Hour
	if life := cert.NotAfter.Sub(cert.NotBefore); !capped && (life-lifetime).Abs() > 48*time.Hour {
		return Pair{}, false
	}
	return Pair{Cert: certPEM, Key: keyPEM}, true
}

// Verify checks that cert chains to ca for every one of usages.
func Verify(ca, cert *x509.Certificate, usages ...x509.ExtKeyUsage) error {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, u := range usages {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			return err
		}
	}
	return nil
}

// KeyAlgorithm names cert's key in the spec's terms, or "" if it is
// neither.
func KeyAlgorithm(cert *x509.Certificate) string {
	switch k := cert.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve.Params().BitSize == 256 {
			return spec.KeyECDSAP256
		}
	case *rsa.PublicKey:
		if k.N.BitLen() == 2048 {
			return spec.KeyRSA2048
		}
	}
	return ""
}

func sameHosts(cert *x509.Certificate, hosts []string) bool {
	var have, want []string
	for _, ip := range cert.IPAddresses {
		have = append(have, ip.String())
	}
	have = append(have, cert.DNSNames...)
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			want = append(want, ip.String())
		} else {
			want = append(want, h)
		}
	}
	slices.Sort(have)
	slices.Sort(want)
	return slices.Equal(have, want)
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

// caConfigJSON renders ca-config.json: the runbook's policy, with the
// spec's certificate lifetime.
func caConfigJSON(c *spec.Cluster) ([]byte, error) {
	type profile struct {
		Expiry string   `json:"expiry"`
		Usages []string `json:"usages,omitempty"`
	}
	exp := hours(c.PKI.CertLifetime.D())
	doc := struct {
		Signing struct {
			Default  profile            `json:"default"`
			Profiles map[string]profile `json:"profiles"`
		} `json:"signing"`
	}{}
	doc.Signing.Default = profile{Expiry: exp}
	doc.Signing.Profiles = map[string]profile{
		ProfileEtcd:   {Expiry: exp, Usages: []string{"signing", "key encipherment", "server auth", "client auth"}},
		ProfileClient: {Expiry: exp, Usages: []string{"signing", "key encipherment", "client auth"}},
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("pki: encode %s: %w", CAConfigFile, err)
	}
	return append(b, '\n'), nil
}

// hours writes d as cfssl and the runbook do: "87600h".
func hours(d time.Duration) string {
	if d%time.Hour == 0 {
		return fmt.Sprintf("%dh", d/time.Hour)
	}
	return d.String()
}

// ContainsKey reports whether data holds any recognisable piece of the
// private key keyPEM: its DER bytes, or any line of its base64 body (which
// survives URL-escaping and re-wrapping). Compressed data must be
// decompressed by the caller first.
func ContainsKey(data, keyPEM []byte) bool {
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		return false
	}
	if bytes.Contains(data, b.Bytes) {
		return true
	}
	for _, line := range bytes.Split(keyPEM, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) >= 16 && !bytes.HasPrefix(line, []byte("-----")) && bytes.Contains(data, line) {
			return true
		}
	}
	return false
}

// ParseCert parses the first PEM certificate of pemBytes (a CA bundle's
// first is its signing CA).
func ParseCert(pemBytes []byte) (*x509.Certificate, error) {
	b, err := ParseBundle(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("pki: parse certificate: %w", err)
	}
	return b[0], nil
}

// ParseBundle parses every PEM certificate of pemBytes, in order; it
// refuses anything else in the file and an empty one.
func ParseBundle(pemBytes []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := bytes.TrimSpace(pemBytes)
	for len(rest) > 0 {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil || b.Type != "CERTIFICATE" {
			return nil, errors.New("want PEM CERTIFICATE blocks and nothing else")
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
		rest = bytes.TrimSpace(rest)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

// IssueClient issues an application client's certificate from the CA in
// dir: CN name (its etcd user), client authentication only, the spec's
// key algorithm and lifetime, never past the CA's end. It never writes.
func IssueClient(c *spec.Cluster, dir, name string) (Pair, error) {
	ca, caKey, _, _, err := loadCA(dir)
	if err != nil {
		return Pair{}, err
	}
	if ca == nil {
		return Pair{}, fmt.Errorf("pki: %s holds no CA; run `etcdimg build` first", dir)
	}
	cfg, err := caConfigJSON(c)
	if err != nil {
		return Pair{}, err
	}
	sgn, err := newSigner(cfg, ca, caKey)
	if err != nil {
		return Pair{}, err
	}
	return issue(sgn, ca, leaf{cn: name, profile: ProfileClient}, c.PKI.KeyAlgorithm, c.PKI.CertLifetime.D())
}
