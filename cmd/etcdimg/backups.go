package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/cluster"
	"etcdimg/internal/backup"
	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
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

// bucket opens the spec's S3 bucket from the operator's machine. Under
// `up`, an endpoint on the LAN is the host's own service; endpoint, when
// given, overrides the spec's.
func bucket(c *spec.Cluster, dir outdir.Layout, endpoint string) (*backup.S3, error) {
	return cluster.Bucket(c, endpoint, local.HostServices(dir))
}

// printManifests prints one line per backup. The cluster ID is printed
// because two clusters of one name (or a cluster and the one restored
// from it) share a bucket path, and revisions compare only within one.
func printManifests(w io.Writer, where string, ms []backup.Manifest, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s (%s ago)\tcluster %s\trev %d\t%d keys\t%.1f MiB\tsha256 %.12s…\tby %s\n", where, m.Name, m.Time.Format(time.RFC3339), now.Sub(m.Time).Round(time.Second), m.ClusterID, m.Revision, m.Keys, float64(m.Size)/(1<<20), m.SHA256, m.Member)
	}
	tw.Flush()
}

func backupsListCmd(a *app) *cobra.Command {
	var endpoint string
	var s3 bool
	c := &cobra.Command{
		Use:   "list",
		Short: "List the verified backups on the members' data disks (and in the bucket with --s3)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, dir, err := a.built()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			w := cmd.OutOrStdout()
			now := time.Now()
			if s3 {
				b, err := bucket(c, dir, endpoint)
				if err != nil {
					return err
				}
				ms, err := b.List(ctx)
				if err != nil {
					return fmt.Errorf("list %s: %w", b.Where(), err)
				}
				fmt.Fprintf(w, "%s: %d backups\n", b.Where(), len(ms))
				printManifests(w, "s3", ms, now)
				return nil
			}
			n, err := cluster.AdminNodeBackups(c, dir, local.Reach(dir))
			if err != nil {
				return err
			}
			var failed []string
			for _, mb := range n.List(ctx) {
				if mb.Err != nil {
					fmt.Fprintf(w, "%s: unreachable: %v\n", mb.Member, mb.Err)
					failed = append(failed, mb.Member)
					continue
				}
				fmt.Fprintf(w, "%s: %d backups on its data disk\n", mb.Member, len(mb.Backups))
				printManifests(w, mb.Member, mb.Backups, now)
			}
			if len(failed) > 0 {
				return fmt.Errorf("backups: %s did not answer", strings.Join(failed, ", "))
			}
			return nil
		},
	}
	c.Flags().BoolVar(&s3, "s3", false, "list the bucket of backup.s3 instead")
	c.Flags().StringVar(&endpoint, "s3-endpoint", "", "reach the bucket here instead of at backup.s3.endpoint")
	return c
}

func backupsGetCmd(a *app) *cobra.Command {
	var endpoint string
	var s3 bool
	c := &cobra.Command{
		Use:   "get NAME FILE",
		Short: "Fetch a backup from the member that holds it (or from the bucket with --s3), verify it, then write FILE",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, dir, err := a.built()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
			defer cancel()
			name, path := args[0], args[1]
			var m backup.Manifest
			var from string
			if s3 {
				b, err := bucket(c, dir, endpoint)
				if err != nil {
					return err
				}
				if m, err = cluster.GetFromBucket(ctx, b, name, path); err != nil {
					return err
				}
				from = b.Where() + name + ".db"
			} else {
				n, err := cluster.AdminNodeBackups(c, dir, local.Reach(dir))
				if err != nil {
					return err
				}
				if m, _, err = n.Get(ctx, name, path); err != nil {
					return err
				}
				from = m.Member
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s from %s: revision %d, %d keys, %.1f MiB, sha256 %s, verified\n", path, from, m.Revision, m.Keys, float64(m.Size)/(1<<20), m.SHA256)
			return nil
		},
	}
	c.Flags().BoolVar(&s3, "s3", false, "fetch from the bucket of backup.s3")
	c.Flags().StringVar(&endpoint, "s3-endpoint", "", "reach the bucket here instead of at backup.s3.endpoint")
	return c
}
