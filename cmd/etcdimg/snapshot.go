package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"etcdimg/cluster"
	"etcdimg/internal/snapshot"
)

func snapshotCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "snapshot",
		Short: "Take and check etcd snapshots",
	}
	c.AddCommand(snapshotSaveCmd(a), withoutOut(snapshotStatusCmd()))
	return c
}

func snapshotSaveCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "save FILE",
		Short: "Save a snapshot from the healthiest member over mTLS, verify it, then write FILE",
		Args:  cobra.ExactArgs(1),
		RunE: a.onEtcd(func(cmd *cobra.Command, args []string, _ *built, e *cluster.Etcd) error {
			ctx, stop := interruptible()
			defer stop()
			s, err := e.SaveSnapshot(ctx, args[0])
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "saved %s from %s (%s) in %.1fs: %d bytes, verified (etcd's integrity hash, database check, revision and keys read)\n",
				s.Path, s.Member, s.URL, s.Took.Seconds(), s.Size)
			snapshot.Table(w, s.Info)
			fmt.Fprintf(w, "sha256 %s\n", s.SHA256)
			return nil
		}),
	}
}

func snapshotStatusCmd() *cobra.Command {
	var skipHash bool
	c := &cobra.Command{
		Use:   "status FILE",
		Short: "Verify a snapshot file and print its hash, revision, keys and size",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			info, err := snapshot.Status(args[0], skipHash)
			if err != nil {
				return err
			}
			snapshot.Table(cmd.OutOrStdout(), info)
			if info.SHA256 != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "sha256 %s\n", info.SHA256)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "sha256 not computed (--skip-hash-check): the database was checked, the file not hashed\n")
			}
			return nil
		},
	}
	c.Flags().BoolVar(&skipHash, "skip-hash-check", false, "accept a database without etcd's integrity hash (copied from a member's data directory), and do not hash it whole")
	return c
}
