package render

import (
	"os"
	"path/filepath"
	"strings"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// The application clients' pairs in OUT/clients: a certificate (CN the
// client's etcd user) and its key each. Their users and roles live on
// the running cluster, which is the caller's to change.

// clientFiles are a client's certificate and key, relative to OUT.
func clientFiles(name string) []string {
	return []string{filepath.Join(outdir.ClientsDir, name+".pem"), filepath.Join(outdir.ClientsDir, name+"-key.pem")}
}

// AddClient issues client name's pair from the CA (nothing written
// yet), runs grant (the role on the running cluster), and only once the
// cluster took it installs the pair: a cluster that refuses leaves no
// certificate behind.
func AddClient(c *spec.Cluster, dir outdir.Layout, name, stamp string, grant func() error) (pki.Pair, error) {
	pair, err := pki.IssueClient(c, dir.PKI(), name)
	if err != nil {
		return pki.Pair{}, err
	}
	if err := grant(); err != nil {
		return pki.Pair{}, err
	}
	return pair, InstallClient(dir, name, pair, stamp)
}

// InstallClient puts a client's new pair into OUT/clients (0700), moving
// an earlier pair of that name under retired/stamp first: a pair is
// never written over.
func InstallClient(dir outdir.Layout, name string, pair pki.Pair, stamp string) error {
	if _, err := MoveToRetired(dir, stamp, clientFiles(name)); err != nil {
		return err
	}
	if _, err := outdir.Write(dir.Clients(), []outdir.File{
		{Path: name + ".pem", Data: pair.Cert, Mode: 0o644},
		{Path: name + "-key.pem", Data: pair.Key, Mode: 0o600},
	}); err != nil {
		return err
	}
	return os.Chmod(dir.Clients(), 0o700)
}

// RetireClient moves a removed client's pair under retired/stamp and
// returns the paths it now has there (none when it had no pair here).
func RetireClient(dir outdir.Layout, name, stamp string) ([]string, error) {
	moved, err := MoveToRetired(dir, stamp, clientFiles(name))
	for i, rel := range moved {
		moved[i] = filepath.Join(RetiredPath(dir, stamp), rel)
	}
	return moved, err
}

// ReissueClients issues a new pair, from the CA that signs now, for every
// client in OUT/clients (same name, so the same role on the cluster),
// moving each old pair under retired/stamp. It returns the clients'
// names, in the order of their files.
func ReissueClients(c *spec.Cluster, dir outdir.Layout, stamp string) ([]string, error) {
	certs, _ := filepath.Glob(dir.ClientCert("*"))
	var names []string
	for _, p := range certs {
		name := strings.TrimSuffix(filepath.Base(p), ".pem")
		if strings.HasSuffix(name, "-key") {
			continue
		}
		pair, err := pki.IssueClient(c, dir.PKI(), name)
		if err != nil {
			return names, err
		}
		if err := InstallClient(dir, name, pair, stamp); err != nil {
			return names, err
		}
		names = append(names, name)
	}
	return names, nil
}
