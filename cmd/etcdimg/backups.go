package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/cluster"
	"etcdimg/cluster/health"
	"etcdimg/ignition"
	"etcdimg/internal/backup"
	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
	"etcdimg/pki"
	"etcdimg/testvm/local"
)

func backupsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "backups",
		Short: "See and fetch the backups the members and the bucket hold",
	}
	c.AddCommand(backupsListCmd(), backupsGetCmd())
	return c
}

// nodeBackups reaches the members' backup APIs with the admin
// certificate, through the forwarded ports under `up`.
func nodeBackups(c *spec.Cluster, dir outdir.Layout) (*cluster.NodeBackups, error) {
	tlsCfg, err := health.TLS(dir.PKIFile(pki.CACertFile), dir.PKIFile(pki.AdminCert), dir.PKIFile(pki.AdminKey))
	if err != nil {
		return nil, err
	}
	ep := reach(dir)
	n := &cluster.NodeBackups{Members: map[string]string{}, TLS: tlsCfg}
	for _, m := range c.Members {
		hp := fmt.Sprintf("%s:%d", m.IP, layout.BackupPort)
		if ep != nil {
			hp = ep(m, layout.BackupPort)
		}
		n.Members[m.Name] = "https://" + hp
	}
	return n, nil
}

// bucket opens the spec's S3 bucket from the operator's machine, with
// the spec's credentials file. Under `up`, an endpoint on the LAN is the
// host's own service; endpoint, when given, overrides the spec's.
func bucket(c *spec.Cluster, dir outdir.Layout, endpoint string) (*backup.S3, error) {
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
	} else if st, err := local.LoadState(runDir(dir)); err == nil {
		if u, err := url.Parse(t.Endpoint); err == nil {
			if ap, err := netip.ParseAddrPort(u.Host); err == nil {
				if host, ok := st.HostServices[ap.String()]; ok {
					t.Endpoint = u.Scheme + "://" + host
				}
			}
		}
	}
	return backup.NewS3(t, c.Name, creds, ca)
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

func backupsListCmd() *cobra.Command {
	var out, endpoint string
	var s3 bool
	c := &cobra.Command{
		Use:   "list",
		Short: "List the verified backups on the members' data disks (and in the bucket with --s3)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, dir, err := loadBuilt(out)
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
			n, err := nodeBackups(c, dir)
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
	outFlag(c, &out)
	c.Flags().BoolVar(&s3, "s3", false, "list the bucket of backup.s3 instead")
	c.Flags().StringVar(&endpoint, "s3-endpoint", "", "reach the bucket here instead of at backup.s3.endpoint")
	return c
}

func backupsGetCmd() *cobra.Command {
	var out, endpoint string
	var s3 bool
	c := &cobra.Command{
		Use:   "get NAME FILE",
		Short: "Fetch a backup from the member that holds it (or from the bucket with --s3), verify it, then write FILE",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, dir, err := loadBuilt(out)
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
				ms, err := b.List(ctx)
				if err != nil {
					return fmt.Errorf("list %s: %w", b.Where(), err)
				}
				for _, x := range ms {
					if x.Name == name {
						m = x
					}
				}
				if m.Name == "" {
					return fmt.Errorf("%s holds no backup named %s; `etcdimg backups list --s3` shows them", b.Where(), name)
				}
				if _, err := cluster.FetchVerified(path, m.SHA256, func(w io.Writer) error { return b.Get(ctx, name, w) }); err != nil {
					return err
				}
				from = b.Where() + name + ".db"
			} else {
				n, err := nodeBackups(c, dir)
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
	outFlag(c, &out)
	c.Flags().BoolVar(&s3, "s3", false, "fetch from the bucket of backup.s3")
	c.Flags().StringVar(&endpoint, "s3-endpoint", "", "reach the bucket here instead of at backup.s3.endpoint")
	return c
}
