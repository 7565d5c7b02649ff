package ign

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// MemberTLS loads the member's certificate and the CA that etcd.conf
// names (the files under root), and returns two configs: as a client
// (the CA as the trust) and as a server that requires a client
// certificate from that CA.
func MemberTLS(root, certFile, keyFile, caFile string) (client, server *tls.Config, err error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(root, certFile), filepath.Join(root, keyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("member certificate: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(root, caFile))
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, nil, errors.New("CA certificate: no certificate in it")
	}
	client = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12, CipherSuites: AEADCipherSuites}
	server = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12, CipherSuites: AEADCipherSuites}
	return client, server, nil
}

// AEADCipherSuites are the TLS 1.2 suites every member's ports accept:
// forward-secret key exchange and authenticated encryption only (no CBC,
// no SHA-1 MACs, no RSA key exchange). TLS 1.3's suites are all AEAD and
// not configurable.
var AEADCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// AEADCipherSuiteNames are AEADCipherSuites as etcd's --cipher-suites
// names them.
func AEADCipherSuiteNames() []string {
	var out []string
	for _, id := range AEADCipherSuites {
		out = append(out, tls.CipherSuiteName(id))
	}
	return out
}

// AllowCNs makes a server config accept only client certificates whose
// common name is one of cns (after the chain is verified), as etcd's
// --peer-cert-allowed-cn does on the peer port.
func AllowCNs(server *tls.Config, cns []string) {
	server.VerifyPeerCertificate = func(_ [][]byte, chains [][]*x509.Certificate) error {
		for _, chain := range chains {
			if len(chain) > 0 && slices.Contains(cns, chain[0].Subject.CommonName) {
				return nil
			}
		}
		return errors.New("the peer port takes members' certificates only")
	}
}
