package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/cluster"
	"etcdimg/internal/authz"
	"etcdimg/internal/render"
	"etcdimg/pki"
)

func clientCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "client",
		Short: "Application clients: a certificate and an etcd role limited to one key prefix each",
	}
	c.AddCommand(clientAddCmd(a), clientListCmd(a), clientRemoveCmd(a))
	return c
}

// access names a client's access as the commands print it.
func access(readOnly bool) string {
	return map[bool]string{false: "read-write", true: "read-only"}[readOnly]
}

func clientAddCmd(a *app) *cobra.Command {
	var prefix string
	var readOnly bool
	c := &cobra.Command{
		Use:   "add NAME --prefix PREFIX",
		Short: "Issue a client-only certificate (CN NAME) into OUT/clients and give user NAME read-write (or --read-only) access to PREFIX on the running cluster",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			// The prefix first: a refused one reads nothing else.
			if err := authz.CheckPrefix(prefix); err != nil {
				return fmt.Errorf("client add --%w", err)
			}
			b, err := a.built()
			if err == nil {
				err = b.c.ValidClientName(name)
			}
			if err != nil {
				return err
			}
			c, dir := b.c, b.dir
			pair, err := render.AddClient(c, dir, name, render.Stamp(time.Now()), func() error {
				e, err := b.etcd()
				if err != nil {
					return err
				}
				added, err := e.AddClient(c.Names(), authz.Client{Name: name, Prefix: prefix, ReadOnly: readOnly})
				if err != nil {
					return err
				}
				for _, o := range added.Overlaps {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s's prefix %s overlaps client %s's %s: each reaches keys of the other; give each client a prefix of its own unless it is meant (a read-only auditor)\n", name, prefix, o.Name, o.Prefix)
				}
				if len(added.Pruned) > 0 {
					fmt.Fprintf(cmd.ErrOrStderr(), "removed  the etcd users of %s: members no longer in the spec nor the cluster, whose certificates were still root\n", strings.Join(added.Pruned, ", "))
				}
				return nil
			})
			if err != nil {
				return err
			}
			cert, _ := pki.ParseCert(pair.Cert)
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "client   %s: %s on %s (etcd user and role %s; authentication is on)\n", name, access(readOnly), prefix, name)
			fmt.Fprintf(w, "cert     %s (client authentication only, until %s)\n", dir.ClientCert(name), cert.NotAfter.Format(time.DateOnly))
			fmt.Fprintf(w, "key      %s\n", dir.ClientKey(name))
			fmt.Fprintf(w, "ca       %s\n", dir.PKIFile(pki.CACertFile))
			return nil
		},
	}
	c.Flags().StringVar(&prefix, "prefix", "", "the key prefix the client may use, such as /app/")
	c.Flags().BoolVar(&readOnly, "read-only", false, "read access only")
	return c
}

func clientListCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the application clients of the running cluster and their prefixes",
		Args:  cobra.NoArgs,
		RunE: a.onEtcd(func(cmd *cobra.Command, _ []string, b *built, e *cluster.Etcd) error {
			cs, enabled, err := e.Clients(b.c.Names())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "authentication %s; root (the admin certificate) and the members %s hold the root role\n", map[bool]string{true: "on", false: "off"}[enabled], strings.Join(b.c.Names(), ", "))
			for _, cl := range cs {
				fmt.Fprintf(w, "client   %-16s %-10s %s\n", cl.Name, access(cl.ReadOnly), cl.Prefix)
				// A client added before prefixes were checked may reach
				// etcdimg's own keys or the API server's.
				if err := authz.CheckPrefix(cl.Prefix); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: client %s: %v; remove it (etcdimg client remove %s) and add it again with a narrower prefix\n", cl.Name, err, cl.Name)
				}
			}
			return nil
		}),
	}
}

func clientRemoveCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "remove NAME",
		Short: "Delete the client's user and role on the running cluster, and move its certificate to OUT/retired",
		Args:  cobra.ExactArgs(1),
		RunE: a.onBuilt(func(cmd *cobra.Command, args []string, b *built) error {
			name := args[0]
			if err := b.c.ValidClientName(name); err != nil {
				return err
			}
			e, err := b.etcd()
			if err != nil {
				return err
			}
			if err := e.RemoveClient(name); err != nil {
				return err
			}
			moved, err := render.RetireClient(b.dir, name, render.Stamp(time.Now()))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "client   %s removed: its user and role are gone, so its certificate is refused for every key\n", name)
			if len(moved) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "retired  %s\n", strings.Join(moved, ", "))
			}
			return nil
		}),
	}
}
