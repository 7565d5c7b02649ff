package main

import (
	"time"

	"github.com/spf13/cobra"

	"etcdimg/internal/spec"
	"etcdimg/testvm/local"
)

func restoreCmd(a *app) *cobra.Command {
	f := specFlags{app: a}
	var bf bootFlags
	var from, endpoint string
	var skipHash bool
	c := &cobra.Command{
		Use:   "restore --snapshot FILE",
		Short: "Build a new cluster's images from a snapshot: same spec and CA, a new cluster token; old images and disks are set aside",
		Long: `restore checks the snapshot first (etcd's integrity hash, the database,
its revision and keys); only then does it set the directory's images, data
disks and any earlier restore aside in OUT/old/<time>/, copy the snapshot to
OUT/restore/snapshot.db, pick a new cluster token, and build images that
carry the snapshot. Each member restores it on its first boot with a blank
data disk; then run ` + "`etcdimg up`" + `.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return local.RestoreImages(local.RestoreOptions{
				Dir: a.dir(), From: from, Endpoint: endpoint, SkipHash: skipHash, SpecGiven: f.config != "", Now: time.Now(),
				Spec: func() (*spec.Cluster, error) { return f.cluster(cmd) }, Inputs: bf.check,
			}, cmd.OutOrStdout(), func() error {
				_, err := buildImages(cmd, &f, &bf, nil, nil)
				return err
			})
		},
	}
	f.register(c)
	bf.register(c)
	c.Flags().StringVar(&from, "snapshot", "", "the snapshot to restore: a file, or s3://bucket/key in backup.s3's endpoint")
	c.Flags().StringVar(&endpoint, "s3-endpoint", "", "reach the bucket here instead of at backup.s3.endpoint")
	c.Flags().BoolVar(&skipHash, "skip-hash-check", false, "accept a database without etcd's integrity hash (copied from a dead member's data directory)")
	return c
}
