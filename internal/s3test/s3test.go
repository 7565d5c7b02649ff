// Package s3test runs a real S3 server for tests: Versity's S3 gateway
// (versitygw) over a directory, on loopback. `make test-tools` builds it
// into .cache/bin from the module proxy.
package s3test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Keys of the server's root user.
const (
	AccessKey = "etcdimg-test"
	SecretKey = "etcdimg-test-secret-key"
)

// Server is a running versitygw.
type Server struct {
	Addr  string // 127.0.0.1:port
	Dir   string
	CAPEM []byte // with TLS: the CA of the server's certificate
	cmd   *exec.Cmd
	log   string
	tls   []string // --cert, --key arguments
}

// Binary finds versitygw: $ETCDIMG_VERSITYGW, else .cache/bin at the
// repository's root.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("ETCDIMG_VERSITYGW"); p != "" {
		return p
	}
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(file), "..", "..", ".cache", "bin", "versitygw")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("versitygw is missing (%v): run `make test-tools`, which builds it into .cache/bin", err)
	}
	return p
}

// StartTLS is Start serving HTTPS, with a certificate for 127.0.0.1
// from a CA of its own (CAPEM).
func StartTLS(t testing.TB) *Server {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "s3test CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	return start(t, 0, []string{"--cert", certPath, "--key", keyPath}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
}

// Start runs versitygw on a free loopback port (or port, when not 0)
// over a new directory, and stops it when the test ends.
func Start(t testing.TB, port int) *Server {
	t.Helper()
	return start(t, port, nil, nil)
}

func start(t testing.TB, port int, tlsArgs []string, caPEM []byte) *Server {
	t.Helper()
	if port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), Dir: t.TempDir(), tls: tlsArgs, CAPEM: caPEM}
	s.log = filepath.Join(t.TempDir(), "versitygw.log")
	s.Restart(t)
	t.Cleanup(func() { s.Stop() })
	return s
}

// Restart starts the server again on the same address and directory.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	side := filepath.Join(s.Dir, ".sidecar")
	os.MkdirAll(side, 0o700)
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	data := filepath.Join(s.Dir, "data")
	os.MkdirAll(data, 0o700)
	args := append([]string{"--access", AccessKey, "--secret", SecretKey, "--port", s.Addr}, s.tls...)
	s.cmd = exec.Command(Binary(t), append(args, "posix", "--sidecar", side, data)...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(s.log)
			t.Fatalf("versitygw did not listen on %s:\n%s", s.Addr, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the server (by PID) and waits for it.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}

// Client is an S3 client of the server as its root user.
func (s *Server) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := minio.New(s.Addr, &minio.Options{Creds: credentials.NewStaticV4(AccessKey, SecretKey, ""), Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// MakeBucket creates a bucket through the S3 API.
func (s *Server) MakeBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Client(t).MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("make bucket %s: %v", name, err)
	}
}

// Credentials is a credentials file for the server's root user.
func Credentials() []byte {
	return []byte("AWS_ACCESS_KEY_ID=" + AccessKey + "\nAWS_SECRET_ACCESS_KEY=" + SecretKey + "\n")
}
