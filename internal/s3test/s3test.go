// Package s3test runs a real S3 server for tests: Versity's S3 gateway
// (versitygw) over a directory, on loopback. `make test-tools` builds it
// into .cache/bin from the module proxy.
package s3test

import (
	"context"
	"fmt"
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
	Addr string // 127.0.0.1:port
	Dir  string
	cmd  *exec.Cmd
	log  string
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

// Start runs versitygw on a free loopback port (or port, when not 0)
// over a new directory, and stops it when the test ends.
func Start(t testing.TB, port int) *Server {
	t.Helper()
	if port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), Dir: t.TempDir()}
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
	s.cmd = exec.Command(Binary(t), "--access", AccessKey, "--secret", SecretKey, "--port", s.Addr, "posix", "--sidecar", side, data)
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
