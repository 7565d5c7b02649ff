package ign

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	client = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}
	server = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	return client, server, nil
}
