package local

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"etcdimg/cluster"
	"etcdimg/internal/outdir"
	"etcdimg/internal/restore"
	"etcdimg/internal/snapshot"
	"etcdimg/internal/spec"
)

// RestoreOptions is what `etcdimg restore` was asked.
type RestoreOptions struct {
	Dir      outdir.Layout
	From     string // the snapshot: a file, or s3://bucket/key
	Endpoint string // reach the bucket here instead of at backup.s3.endpoint
	SkipHash bool
	// SpecGiven is set when --config names the spec: the directory
	// need not hold one.
	SpecGiven bool
	// Spec reads the cluster spec; Inputs checks that the image inputs
	// are readable.
	Spec   func() (*spec.Cluster, error)
	Inputs func() error
	Now    time.Time
}

// Restore makes o.Dir restore a snapshot (restore.Prepare), after every
// refusal, in this order: the snapshot is fetched (from S3) and verified
// before anything in the directory is touched, the run directory's lock
// included; then the directory must have a spec (or one is given), the
// lock is taken, the cluster must not be running under `up`, the spec
// and the image inputs must be readable. On success the caller builds
// the images, then calls done, which releases the lock and removes a
// downloaded snapshot; on error, Restore has done that itself.
func Restore(o RestoreOptions) (res *restore.Result, done func(), err error) {
	var cleanup []func()
	release := func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	if o.From == "" {
		return nil, nil, fmt.Errorf("--snapshot is required: a file from `etcdimg snapshot save` or `etcdctl snapshot save`")
	}
	dir, file := o.Dir, o.From
	if rest, ok := strings.CutPrefix(o.From, "s3://"); ok {
		// Downloaded outside the directory, so that a bad object
		// writes nothing there.
		tmp, err := fetchS3(o, rest)
		if tmp != "" {
			cleanup = append(cleanup, func() { os.Remove(tmp) })
		}
		if err != nil {
			return nil, nil, fmt.Errorf("--snapshot %s: %w", o.From, err)
		}
		file = tmp
	} else if strings.Contains(o.From, "://") {
		return nil, nil, fmt.Errorf("--snapshot %s: give a file or s3://bucket/key", o.From)
	}
	if _, err := snapshot.Verify(file, o.SkipHash); err != nil {
		return nil, nil, err
	}
	if _, err := os.Stat(dir.Spec()); err != nil && !o.SpecGiven {
		return nil, nil, fmt.Errorf("%s has no cluster spec (%s); restore rebuilds a directory's cluster: pass --out of that directory, or --config with a spec", dir.Dir(), dir.Spec())
	}
	lock, err := LockDir(dir)
	if err != nil {
		return nil, nil, err
	}
	cleanup = append(cleanup, lock.Unlock)
	if st, err := Load(dir); err == nil && len(st.Running()) > 0 {
		return nil, nil, fmt.Errorf("the cluster in %s is running (%d members); run `etcdimg down --out %s` first: restore never replaces a running cluster's images", dir.Dir(), len(st.Running()), dir.Dir())
	}
	c, err := o.Spec()
	if err != nil {
		return nil, nil, err
	}
	if err := o.Inputs(); err != nil {
		return nil, nil, err
	}
	abs, _ := filepath.Abs(file)
	if res, err = restore.Prepare(dir, c.Name, abs, o.From, o.SkipHash, o.Now); err != nil {
		return nil, nil, err
	}
	return res, release, nil
}

// RestoreImages is Restore, then it says on w what it verified, set
// aside and chose, and runs build (the images that carry the snapshot)
// under the lock. A build that fails leaves the restore planned: its
// error says how to finish.
func RestoreImages(o RestoreOptions, w io.Writer, build func() error) error {
	res, done, err := Restore(o)
	if err != nil {
		return err
	}
	defer done()
	dir, info := o.Dir, res.Info
	fmt.Fprintf(w, "snapshot %s verified: revision %d, %d keys, %.1f MiB, sha256 %s\n", o.From, info.Revision, info.TotalKeys, float64(info.Size)/(1<<20), info.SHA256)
	if len(res.Moved) > 0 {
		fmt.Fprintf(w, "set aside %s in %s\n", strings.Join(res.Moved, ", "), filepath.Join(dir.Dir(), res.Aside))
	}
	fmt.Fprintf(w, "new cluster token %s: members of the old cluster can never join this one\n", res.Plan.Token)
	if err := build(); err != nil {
		return fmt.Errorf("%w; the restore is planned (%s): fix this and run `etcdimg build --out %s`", err, filepath.Join(dir.Dir(), restore.PlanFile), dir.Dir())
	}
	fmt.Fprintf(w, "next: etcdimg up --out %s (each member restores the snapshot on its blank data disk)\n", dir.Dir())
	return nil
}

// fetchS3 downloads s3://BUCKET/KEY (rest is BUCKET/KEY) from the spec's
// S3 endpoint with its credentials into a temporary file outside the
// output directory and returns its path.
func fetchS3(o RestoreOptions, rest string) (string, error) {
	bkt, key, err := restore.ParseS3(rest)
	if err != nil {
		return "", err
	}
	c, err := o.Spec()
	if err != nil {
		return "", err
	}
	restore.UseBucket(c, bkt)
	b, err := cluster.Bucket(c, o.Endpoint, HostServices(o.Dir))
	if err != nil {
		return "", err
	}
	return restore.Fetch(context.Background(), b, key)
}
