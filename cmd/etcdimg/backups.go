package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/cluster"
	"etcdimg/testvm/local"
)

func backupsCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "backups",
		Short: "See and fetch the backups the members and the bucket hold",
	}
	c.AddCommand(backupsListCmd(a), backupsGetCmd(a))
	return c
}

// backupFlags choose where `backups` looks: the members, or the bucket.
type backupFlags struct {
	endpoint string
	s3       bool
}

func (f *backupFlags) register(c *cobra.Command, s3 string) {
	c.Flags().BoolVar(&f.s3, "s3", false, s3)
	c.Flags().StringVar(&f.endpoint, "s3-endpoint", "", "reach the bucket here instead of at backup.s3.endpoint")
}

// source is where the operator reaches the backups: under `up`, through
// the forwarded ports and the host's own services.
func (f *backupFlags) source(b *built) cluster.BackupSource {
	return cluster.BackupSource{S3: f.s3, Endpoint: f.endpoint, Hosts: local.HostServices(b.dir), Reach: local.Reach(b.dir)}
}

func backupsListCmd(a *app) *cobra.Command {
	var f backupFlags
	c := &cobra.Command{
		Use:   "list",
		Short: "List the verified backups on the members' data disks (and in the bucket with --s3)",
		Args:  cobra.NoArgs,
		RunE: a.onBuilt(func(cmd *cobra.Command, _ []string, b *built) error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			return cluster.ListBackups(ctx, cmd.OutOrStdout(), b.c, b.dir, f.source(b), time.Now())
		}),
	}
	f.register(c, "list the bucket of backup.s3 instead")
	return c
}

func backupsGetCmd(a *app) *cobra.Command {
	var f backupFlags
	c := &cobra.Command{
		Use:   "get NAME FILE",
		Short: "Fetch a backup from the member that holds it (or from the bucket with --s3), verify it, then write FILE",
		Args:  cobra.ExactArgs(2),
		RunE: a.onBuilt(func(cmd *cobra.Command, args []string, b *built) error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
			defer cancel()
			m, from, err := cluster.GetBackup(ctx, b.c, b.dir, f.source(b), args[0], args[1])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s from %s: revision %d, %d keys, %.1f MiB, sha256 %s, verified\n", args[1], from, m.Revision, m.Keys, mib(m.Size), m.SHA256)
			return nil
		}),
	}
	f.register(c, "fetch from the bucket of backup.s3")
	return c
}
