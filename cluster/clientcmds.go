package cluster

import (
	"fmt"
	"io"
	"strings"
	"time"

	"etcdimg/internal/authz"
	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// The client commands on a built directory's cluster: what they change
// here and on the cluster, and what they say.

// Access names a client's access as the commands print it.
func Access(readOnly bool) string {
	return map[bool]string{false: "read-write", true: "read-only"}[readOnly]
}

// Warnings are what AddClient found beside client cl, as the operator
// is warned of them: each client whose prefix overlaps cl's, then the
// users of removed members it deleted.
func (a *ClientAdded) Warnings(cl authz.Client) []string {
	var ws []string
	for _, o := range a.Overlaps {
		ws = append(ws, fmt.Sprintf("warning: %s's prefix %s overlaps client %s's %s: each reaches keys of the other; give each client a prefix of its own unless it is meant (a read-only auditor)", cl.Name, cl.Prefix, o.Name, o.Prefix))
	}
	if len(a.Pruned) > 0 {
		ws = append(ws, fmt.Sprintf("removed  the etcd users of %s: members no longer in the spec nor the cluster, whose certificates were still root", strings.Join(a.Pruned, ", ")))
	}
	return ws
}

// IssueClient adds the application client cl to the cluster of the
// built directory dir (render.AddClient): its pair is issued, then its
// user and role are made with the admin certificate (AddClient), and only
// then is the pair installed in OUT/clients. It warns on warn of what
// AddClient found, and says on w what the client may do and where its
// files are.
func IssueClient(w, warn io.Writer, c *spec.Cluster, dir outdir.Layout, reach render.Endpoint, cl authz.Client, now time.Time) error {
	pair, err := render.AddClient(c, dir, cl.Name, render.Stamp(now), func() error {
		e, err := Admin(c, dir, reach)
		if err != nil {
			return err
		}
		added, err := e.AddClient(c.Names(), cl)
		if err != nil {
			return err
		}
		for _, s := range added.Warnings(cl) {
			fmt.Fprintln(warn, s)
		}
		return nil
	})
	if err != nil {
		return err
	}
	cert, _ := pki.ParseCert(pair.Cert)
	fmt.Fprintf(w, "client   %s: %s on %s (etcd user and role %s; authentication is on)\n", cl.Name, Access(cl.ReadOnly), cl.Prefix, cl.Name)
	fmt.Fprintf(w, "cert     %s (client authentication only, until %s)\n", dir.ClientCert(cl.Name), cert.NotAfter.Format(time.DateOnly))
	fmt.Fprintf(w, "key      %s\n", dir.ClientKey(cl.Name))
	fmt.Fprintf(w, "ca       %s\n", dir.PKIFile(pki.CACertFile))
	return nil
}

// ListClients says on w whether authentication is on, who holds the
// root role, and each application client with its access and prefix. A
// client whose prefix would be refused now (added before prefixes were
// checked: it may reach etcdimg's own keys or the API server's) is
// warned of on warn.
func (e *Etcd) ListClients(w, warn io.Writer, members []string) error {
	cs, enabled, err := e.Clients(members)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "authentication %s; root (the admin certificate) and the members %s hold the root role\n", map[bool]string{true: "on", false: "off"}[enabled], strings.Join(members, ", "))
	for _, cl := range cs {
		fmt.Fprintf(w, "client   %-16s %-10s %s\n", cl.Name, Access(cl.ReadOnly), cl.Prefix)
		// The API server's client holds /registry/ by design; only the
		// operator's clients are held to the prefix rule.
		if err := authz.CheckPrefix(cl.Prefix); err != nil && cl != authz.KubeAPIServer {
			fmt.Fprintf(warn, "warning: client %s: %v; remove it (etcdimg client remove %s) and add it again with a narrower prefix\n", cl.Name, err, cl.Name)
		}
	}
	return nil
}

// DropClient deletes client name's user and role on the cluster
// (RemoveClient), then moves its pair in dir to OUT/retired, and says so
// on w.
func (e *Etcd) DropClient(w io.Writer, dir outdir.Layout, name string, now time.Time) error {
	if err := e.RemoveClient(name); err != nil {
		return err
	}
	moved, err := render.RetireClient(dir, name, render.Stamp(now))
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "client   %s removed: its user and role are gone, so its certificate is refused for every key\n", name)
	if len(moved) > 0 {
		fmt.Fprintf(w, "retired  %s\n", strings.Join(moved, ", "))
	}
	return nil
}
