package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/cluster"
	"etcdimg/internal/authz"
	"etcdimg/testvm/local"
)

func clientCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "client",
		Short: "Application clients: a certificate and an etcd role limited to one key prefix each",
	}
	c.AddCommand(clientAddCmd(a), clientListCmd(a), clientRemoveCmd(a))
	return c
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
			cl := authz.Client{Name: name, Prefix: prefix, ReadOnly: readOnly}
			return cluster.IssueClient(cmd.OutOrStdout(), cmd.ErrOrStderr(), b.c, b.dir, local.Reach(b.dir), cl, time.Now())
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
			return e.ListClients(cmd.OutOrStdout(), cmd.ErrOrStderr(), b.c.Names())
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
			return e.DropClient(cmd.OutOrStdout(), b.dir, name, time.Now())
		}),
	}
}
