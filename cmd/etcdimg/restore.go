package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/internal/outdir"
	"etcdimg/internal/restore"
	"etcdimg/internal/snapshot"
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
			if from == "" {
				return fmt.Errorf("--snapshot is required: a file from `etcdimg snapshot save` or `etcdctl snapshot save`")
			}
			dir := a.dir()
			local := from
			if rest, ok := strings.CutPrefix(from, "s3://"); ok {
				// Downloaded outside the directory, so that a bad object
				// writes nothing there.
				tmp, err := fetchS3(cmd, &f, dir, rest, endpoint)
				if tmp != "" {
					defer os.Remove(tmp)
				}
				if err != nil {
					return fmt.Errorf("--snapshot %s: %w", from, err)
				}
				local = tmp
			} else if strings.Contains(from, "://") {
				return fmt.Errorf("--snapshot %s: give a file or s3://bucket/key", from)
			}
			// The snapshot is checked before anything else is touched,
			// the run directory's lock file included.
			if _, err := snapshot.Verify(local, skipHash); err != nil {
				return err
			}
			if _, err := os.Stat(dir.Spec()); err != nil && f.config == "" {
				return fmt.Errorf("%s has no cluster spec (%s); restore rebuilds a directory's cluster: pass --out of that directory, or --config with a spec", dir.Dir(), dir.Spec())
			}
			// Everything that can refuse is asked before anything moves:
			// the cluster must be down, the spec and the image inputs
			// readable, the snapshot sound (Prepare verifies it first).
			lock, err := lockRun(dir)
			if err != nil {
				return err
			}
			defer lock.Unlock()
			if st, err := localState(dir); err == nil && len(st.Running()) > 0 {
				return fmt.Errorf("the cluster in %s is running (%d members); run `etcdimg down --out %s` first: restore never replaces a running cluster's images", dir.Dir(), len(st.Running()), dir.Dir())
			}
			c, _, err := f.load(cmd)
			if err != nil {
				return err
			}
			if _, err := bf.inputs(); err != nil {
				return err
			}
			abs, _ := filepath.Abs(local)
			res, err := restore.Prepare(dir, c.Name, abs, from, skipHash, time.Now())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "snapshot %s verified: revision %d, %d keys, %.1f MiB, sha256 %s\n", from, res.Info.Revision, res.Info.TotalKeys, mib(res.Info.Size), res.Info.SHA256)
			if len(res.Moved) > 0 {
				fmt.Fprintf(w, "set aside %s in %s\n", strings.Join(res.Moved, ", "), filepath.Join(dir.Dir(), res.Aside))
			}
			fmt.Fprintf(w, "new cluster token %s: members of the old cluster can never join this one\n", res.Plan.Token)
			if _, _, _, err := buildImages(cmd, &f, &bf, nil, nil); err != nil {
				return fmt.Errorf("%w; the restore is planned (%s): fix this and run `etcdimg build --out %s`", err, filepath.Join(dir.Dir(), restore.PlanFile), dir.Dir())
			}
			fmt.Fprintf(w, "next: etcdimg up --out %s (each member restores the snapshot on its blank data disk)\n", dir.Dir())
			return nil
		},
	}
	f.register(c)
	bf.register(c)
	c.Flags().StringVar(&from, "snapshot", "", "the snapshot to restore: a file, or s3://bucket/key in backup.s3's endpoint")
	c.Flags().StringVar(&endpoint, "s3-endpoint", "", "reach the bucket here instead of at backup.s3.endpoint")
	c.Flags().BoolVar(&skipHash, "skip-hash-check", false, "accept a database without etcd's integrity hash (copied from a dead member's data directory)")
	return c
}

// fetchS3 downloads s3://BUCKET/KEY (rest is BUCKET/KEY) from the spec's
// S3 endpoint with its credentials into a temporary file outside the
// output directory and returns its path.
func fetchS3(cmd *cobra.Command, f *specFlags, dir outdir.Layout, rest, endpoint string) (string, error) {
	bkt, key, err := restore.ParseS3(rest)
	if err != nil {
		return "", err
	}
	c, _, err := f.load(cmd)
	if err != nil {
		return "", err
	}
	restore.UseBucket(c, bkt)
	b, err := bucket(c, dir, endpoint)
	if err != nil {
		return "", err
	}
	return restore.Fetch(context.Background(), b, key)
}
