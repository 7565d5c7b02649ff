package outdir

import "path/filepath"

// The application clients' pairs (etcdimg client add), by client name:
// clients/NAME.pem and clients/NAME-key.pem. A member may not take a
// client's name, nor a client a member's.
func (l Layout) Clients() string { return filepath.Join(string(l), ClientsDir) }
func (l Layout) ClientCert(name string) string {
	return filepath.Join(string(l), ClientsDir, name+".pem")
}
func (l Layout) ClientKey(name string) string {
	return filepath.Join(string(l), ClientsDir, name+"-key.pem")
}

// ClientsDir holds the application clients' certificates and keys.
const ClientsDir = "clients"

// S3Dir keeps copies of the files backup.s3 names on the operator's
// machine (its credentials and CA), read once beside the spec that named
// them: the spec saved in the directory names these copies, so that
// later runs from any working directory use the same files.
const S3Dir = "s3"

func (l Layout) S3Credentials() string { return filepath.Join(string(l), S3Dir, "credentials.env") }
func (l Layout) S3CA() string          { return filepath.Join(string(l), S3Dir, "ca.pem") }
