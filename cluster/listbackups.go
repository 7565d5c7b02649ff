package cluster

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"etcdimg/internal/backup"
	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
)

// BackupSource is where `etcdimg backups` looks: the members' data disks
// at the addresses Reach gives, or with S3 the bucket of backup.s3,
// reached at Endpoint when set, else as Bucket does with Hosts.
type BackupSource struct {
	S3       bool
	Endpoint string
	Hosts    map[string]string
	Reach    render.Endpoint
}

// ListBackups prints the verified backups the source holds: a heading
// and one line per backup for the bucket, or for each member. A member
// that does not answer is printed as such, and named in the error.
func ListBackups(ctx context.Context, w io.Writer, c *spec.Cluster, dir outdir.Layout, src BackupSource, now time.Time) error {
	if src.S3 {
		b, err := Bucket(c, src.Endpoint, src.Hosts)
		if err != nil {
			return err
		}
		ms, err := b.List(ctx)
		if err != nil {
			return fmt.Errorf("list %s: %w", b.Where(), err)
		}
		fmt.Fprintf(w, "%s: %d backups\n", b.Where(), len(ms))
		BackupTable(w, "s3", ms, now)
		return nil
	}
	n, err := AdminNodeBackups(c, dir, src.Reach)
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
		BackupTable(w, mb.Member, mb.Backups, now)
	}
	if len(failed) > 0 {
		return fmt.Errorf("backups: %s did not answer", strings.Join(failed, ", "))
	}
	return nil
}

// GetBackup fetches backup name from the source to path, verified, and
// returns its manifest and where it came from (the object's address, or
// the member that held it).
func GetBackup(ctx context.Context, c *spec.Cluster, dir outdir.Layout, src BackupSource, name, path string) (m backup.Manifest, from string, err error) {
	if src.S3 {
		b, err := Bucket(c, src.Endpoint, src.Hosts)
		if err != nil {
			return m, "", err
		}
		m, err = GetFromBucket(ctx, b, name, path)
		return m, b.Where() + name + ".db", err
	}
	n, err := AdminNodeBackups(c, dir, src.Reach)
	if err != nil {
		return m, "", err
	}
	m, _, err = n.Get(ctx, name, path)
	return m, m.Member, err
}

// BackupTable prints one line per backup. The cluster ID is printed
// because two clusters of one name (or a cluster and the one restored
// from it) share a bucket path, and revisions compare only within one.
func BackupTable(w io.Writer, where string, ms []backup.Manifest, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s (%s ago)\tcluster %s\trev %d\t%d keys\t%.1f MiB\tsha256 %.12s…\tby %s\n", where, m.Name, m.Time.Format(time.RFC3339), now.Sub(m.Time).Round(time.Second), m.ClusterID, m.Revision, m.Keys, float64(m.Size)/(1<<20), m.SHA256, m.Member)
	}
	tw.Flush()
}
