package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"etcdimg/cluster/health"
	"etcdimg/ignition"
	"etcdimg/internal/backup"
	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// A built output directory's cluster, as the operator reaches it: its
// members at the addresses reach gives (render.Endpoint: nil for the
// members' own addresses; a cluster under `up` passes its forwarded
// ports) with the directory's admin certificate.

// adminTLS is the client side of mTLS with dir's admin certificate.
func adminTLS(dir outdir.Layout) (*tls.Config, error) {
	return health.TLS(dir.PKIFile(pki.CACertFile), dir.PKIFile(pki.AdminCert), dir.PKIFile(pki.AdminKey))
}

// hostPort is where the operator reaches member m's port.
func hostPort(reach render.Endpoint, m spec.Member, port int) string {
	if reach != nil {
		return reach(m, port)
	}
	return m.IP + ":" + strconv.Itoa(port)
}

// Endpoints are the members' client URLs, in spec order.
func Endpoints(c *spec.Cluster, reach render.Endpoint) []health.Endpoint {
	var eps []health.Endpoint
	for _, m := range c.Members {
		eps = append(eps, health.Endpoint{Member: m.Name, URL: "https://" + hostPort(reach, m, layout.ClientPort)})
	}
	return eps
}

// Admin is the cluster's etcd API with dir's admin certificate.
func Admin(c *spec.Cluster, dir outdir.Layout, reach render.Endpoint) (*Etcd, error) {
	tlsCfg, err := adminTLS(dir)
	if err != nil {
		return nil, err
	}
	return &Etcd{Endpoints: Endpoints(c, reach), TLS: tlsCfg}, nil
}

// AdminNodeBackups reaches the members' backup APIs with dir's admin
// certificate.
func AdminNodeBackups(c *spec.Cluster, dir outdir.Layout, reach render.Endpoint) (*NodeBackups, error) {
	tlsCfg, err := adminTLS(dir)
	if err != nil {
		return nil, err
	}
	return &NodeBackups{Members: memberURLs(c, reach, layout.BackupPort), TLS: tlsCfg}, nil
}

// memberURLs are the https URLs of c's members' port, by name.
func memberURLs(c *spec.Cluster, reach render.Endpoint, port int) map[string]string {
	urls := map[string]string{}
	for _, m := range c.Members {
		urls[m.Name] = "https://" + hostPort(reach, m, port)
	}
	return urls
}

// EtcdctlEnv is the environment that points etcdctl at the cluster with
// dir's admin certificate (absolute paths, so that it works from any
// working directory).
func EtcdctlEnv(c *spec.Cluster, dir outdir.Layout, reach render.Endpoint) []string {
	var urls []string
	for _, e := range Endpoints(c, reach) {
		urls = append(urls, e.URL)
	}
	abs, _ := filepath.Abs(dir.Dir())
	a := outdir.Layout(abs)
	return []string{
		"ETCDCTL_ENDPOINTS=" + strings.Join(urls, ","),
		"ETCDCTL_CACERT=" + a.PKIFile(pki.CACertFile),
		"ETCDCTL_CERT=" + a.PKIFile(pki.AdminCert),
		"ETCDCTL_KEY=" + a.PKIFile(pki.AdminKey),
	}
}

// Bucket opens the spec's S3 bucket from the operator's machine, with
// the spec's credentials file. endpoint, when given, overrides the
// spec's; else hosts, when it names the spec's endpoint (an address of
// a local cluster's LAN → the host's address of that service), gives
// where the operator's machine reaches it.
func Bucket(c *spec.Cluster, endpoint string, hosts map[string]string) (*backup.S3, error) {
	if c.Backup.S3 == nil {
		return nil, fmt.Errorf("the spec has no backup.s3 section; add one to back up to a bucket")
	}
	creds, err := render.S3Credentials(c.Backup.S3.CredentialsFile)
	if err != nil {
		return nil, err
	}
	var ca []byte
	if c.Backup.S3.CAFile != "" {
		if ca, err = os.ReadFile(c.Backup.S3.CAFile); err != nil {
			return nil, fmt.Errorf("spec: backup.s3.caFile: %w", err)
		}
	}
	t := *ignition.BackupConfig(c, ignition.Options{S3CA: ca}).S3
	if endpoint != "" {
		t.Endpoint = endpoint
	} else if hosts != nil {
		if u, err := url.Parse(t.Endpoint); err == nil {
			if ap, err := netip.ParseAddrPort(u.Host); err == nil {
				if host, ok := hosts[ap.String()]; ok {
					t.Endpoint = u.Scheme + "://" + host
				}
			}
		}
	}
	return backup.NewS3(t, c.Name, creds, ca)
}

// GetFromBucket fetches the backup called name from b to path, verified
// against its manifest's hash, and returns the manifest.
func GetFromBucket(ctx context.Context, b *backup.S3, name, path string) (backup.Manifest, error) {
	var m backup.Manifest
	ms, err := b.List(ctx)
	if err != nil {
		return m, fmt.Errorf("list %s: %w", b.Where(), err)
	}
	for _, x := range ms {
		if x.Name == name {
			m = x
		}
	}
	if m.Name == "" {
		return m, fmt.Errorf("%s holds no backup named %s; `etcdimg backups list --s3` shows them", b.Where(), name)
	}
	_, err = FetchVerified(path, m.SHA256, func(w io.Writer) error { return b.Get(ctx, name, w) })
	return m, err
}

// LiveClusterID is the ID of the cluster that answers: the header of a
// member list (one request, not every member's status).
func (e *Etcd) LiveClusterID(ctx context.Context) (uint64, error) {
	list, err := e.MemberList(ctx)
	if err != nil {
		return 0, fmt.Errorf("member list: %w", err)
	}
	return list.Header.ClusterId, nil
}

// ConfirmClusterID records that the cluster answering is the one dir's
// images belong to (render.CheckClusterID), once it is healthy: from
// then on its ID is kept whatever the spec becomes. It returns the
// error of a cluster of another ID, or of one that does not answer.
func ConfirmClusterID(ctx context.Context, c *spec.Cluster, dir outdir.Layout, e *Etcd) error {
	live, err := e.LiveClusterID(ctx)
	if err == nil {
		_, err = render.CheckClusterID(c, dir, live)
	}
	return err
}
