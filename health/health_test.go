package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"etcdimg/pki"
	"etcdimg/spec"
	"net"
	"strings"
	"testing"
	"time"
)

// TestUnreachableMemberIsUnhealthy: a port nobody answers on is reported
// unhealthy with an error, and the table carries the runbook's columns.
// (Healthy members are checked end to end in e2e.)
func TestUnreachableMemberIsUnhealthy(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	rs := Check(context.Background(), []Endpoint{{Member: "etcd-9", URL: "https://" + addr}}, &tls.Config{}, 500*time.Millisecond)
	if len(rs) != 1 || rs[0].Healthy || rs[0].Err == "" || rs[0].Member != "etcd-9" {
		t.Fatalf("results %+v", rs)
	}
	if Healthy(rs) || Healthy(nil) {
		t.Error("Healthy is true without healthy members")
	}
	var b strings.Builder
	Table(&b, rs)
	for _, col := range []string{"ENDPOINT", "HEALTH", "TOOK", "ERROR", "https://" + addr, "false"} {
		if !strings.Contains(b.String(), col) {
			t.Errorf("table lacks %q:\n%s", col, b.String())
		}
	}
}

// TestExpiringNamesTheServedCertificateAndItsCA serves a member
// certificate from a CA that ends in 20 days (pki caps the leaf there)
// and expects a warning for each; with a 10-day window, none.
func TestExpiringNamesTheServedCertificateAndItsCA(t *testing.T) {
	c := spec.Default(1)
	c.PKI.CALifetime = spec.Duration(20 * 24 * time.Hour)
	c.PKI.CertLifetime = c.PKI.CALifetime
	set, err := pki.Ensure(c, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := tls.X509KeyPair(set.Members["etcd-1"].Cert, set.Members["etcd-1"].Key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{serverCert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.(*tls.Conn).Handshake()
			conn.Close()
		}
	}()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(set.CACert)
	tc := &tls.Config{RootCAs: pool}
	eps := []Endpoint{{Member: "etcd-1", URL: "https://" + ln.Addr().String()}}
	w := Expiring(context.Background(), eps, tc, time.Now(), ExpiryWindow)
	if len(w) != 2 || !strings.Contains(w[0], "etcd-1's certificate (CN etcd-1) ends on") || !strings.Contains(w[1], "the CA (CN etcd-ca)") || !strings.Contains(w[1], "in 19 days") {
		t.Errorf("warnings %q", w)
	}
	if w := Expiring(context.Background(), eps, tc, time.Now(), 10*24*time.Hour); len(w) != 0 {
		t.Errorf("10-day window: %q", w)
	}
}
