package render

import (
	"fmt"
	"os"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
)

// checkNames refuses a member named like an application client of dir
// (clients/NAME.pem): members hold etcd's root role and are let onto the
// peer port by their certificates' CN, so the client's certificate would
// become a member's. The other way round (a client named like a member,
// or like a certificate render issues itself) spec.ValidClientName
// refuses, and spec.Validate refuses reserved member names.
func checkNames(c *spec.Cluster, dir outdir.Layout) error {
	for i, m := range c.Members {
		if _, err := os.Lstat(dir.ClientCert(m.Name)); err == nil {
			return fmt.Errorf("spec: members[%d].name %q is an application client's name (%s): members hold etcd's root role, so that client's certificate would become root and be let onto the peer port; rename the member, or remove the client first (etcdimg client remove %s)", i, m.Name, dir.ClientCert(m.Name), m.Name)
		}
	}
	return nil
}
