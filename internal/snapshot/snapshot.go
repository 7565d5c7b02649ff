// Package snapshot checks etcd snapshot files before anything trusts
// them: the SHA-256 that etcd appends to a snapshot it serves, then the
// file opened as etcd's database (bbolt's own consistency check), its
// revision and its live keys counted, as `etcdutl snapshot status` does.
//
// A snapshot counts only once Verify has passed. It does no network and
// writes nothing.
package snapshot

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/olekukonko/tablewriter"
	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"

	"etcdimg/internal/input"
)

// Info is what a verified snapshot holds.
type Info struct {
	Path      string
	Size      int64  // bytes of the file
	SHA256    string // of the whole file, hex
	HasHash   bool   // etcd's integrity hash was present (and matched)
	Hash      uint32 // etcd's hash of the database contents (crc32c)
	Revision  int64
	TotalKeys int
	TotalSize int64  // bytes of the database
	Version   string // etcd's storage version, "" before 3.6
}

// hashed reports whether a file of n bytes ends in etcd's SHA-256: a
// database is a whole number of 512-byte units, plus the 32 bytes.
func hashed(n int64) bool { return n%512 == sha256.Size }

// Verify checks the snapshot at path. Without skipHash, a file without
// etcd's integrity hash is refused; skipHash is for a database copied
// from a member's data directory, which has none. Info.SHA256 is always
// the whole file's digest (restore names the copy it puts in the images
// by it).
func Verify(path string, skipHash bool) (Info, error) { return verify(path, skipHash, true) }

// Status is Verify for `etcdimg snapshot status`: with skipHash, a file
// without etcd's hash is checked as a database only, and not read whole
// for its SHA-256 as well (Info.SHA256 is then "").
func Status(path string, skipHash bool) (Info, error) { return verify(path, skipHash, !skipHash) }

func verify(path string, skipHash, digest bool) (info Info, err error) {
	info.Path = path
	// Only a regular file (opening a FIFO waits for a writer for ever).
	f, st, err := input.OpenRegular(path)
	if errors.Is(err, input.ErrNotRegular) {
		return info, fmt.Errorf("snapshot: %w; name a snapshot file", err)
	}
	if err != nil {
		return info, fmt.Errorf("snapshot: %w", err)
	}
	defer f.Close()
	info.Size = st.Size()
	if info.Size == 0 {
		return info, fmt.Errorf("snapshot: %s is empty", path)
	}
	if hashed(info.Size) {
		whole, db := sha256.New(), sha256.New()
		if _, err := io.Copy(io.MultiWriter(db, whole), io.NewSectionReader(f, 0, info.Size-sha256.Size)); err != nil {
			return info, fmt.Errorf("snapshot: read %s: %w", path, err)
		}
		trailer := make([]byte, sha256.Size)
		if _, err := f.ReadAt(trailer, info.Size-sha256.Size); err != nil {
			return info, fmt.Errorf("snapshot: read %s: %w", path, err)
		}
		whole.Write(trailer)
		if !bytes.Equal(db.Sum(nil), trailer) {
			return info, fmt.Errorf("snapshot: %s fails etcd's integrity hash (SHA-256 of its contents does not match the one at its end): it is corrupt or truncated", path)
		}
		info.HasHash = true
		info.SHA256 = hex.EncodeToString(whole.Sum(nil))
	} else if !skipHash {
		return info, fmt.Errorf("snapshot: %s has no integrity hash (%d bytes is not a database plus etcd's 32-byte SHA-256): not a snapshot etcd served, or truncated; for a db file copied from a member's data directory pass --skip-hash-check", path, info.Size)
	}
	// What makes a database etcd's is its buckets (a cluster that never
	// stored a key has no revision to show); checked first, as etcd's
	// status code assumes them. Without etcd's hash this comes before
	// any whole read of the file: a file that is no database (a huge
	// sparse one) is refused from its first pages.
	if err := etcdBuckets(path); err != nil {
		return info, fmt.Errorf("snapshot: %s is not an etcd snapshot: %w", path, err)
	}
	st2, err := status(path)
	if err != nil {
		return info, fmt.Errorf("snapshot: %s does not open as etcd's database: %w", path, err)
	}
	info.Hash, info.Revision, info.TotalKeys, info.TotalSize, info.Version = st2.Hash, st2.Revision, st2.TotalKey, st2.TotalSize, st2.Version
	if !info.HasHash && digest {
		whole := sha256.New()
		if _, err := io.Copy(whole, io.NewSectionReader(f, 0, info.Size)); err != nil {
			return info, fmt.Errorf("snapshot: read %s: %w", path, err)
		}
		info.SHA256 = hex.EncodeToString(whole.Sum(nil))
	}
	return info, nil
}

// status is etcdutl's snapshot status, which also runs bbolt's check of
// every page; a database damaged in a way bbolt does not expect may
// panic it, which is an error here.
func status(path string) (st snapshot.Status, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("damaged database: %v", r)
		}
	}()
	st, err = snapshot.NewV3(zap.NewNop()).Status(path)
	if err != nil {
		return st, errors.New(oneLine(err.Error()))
	}
	return st, nil
}

// etcdBuckets checks that the database has the buckets every etcd
// keeps: "meta" (its consistent index) and "key" (the keyspace).
func etcdBuckets(path string) error {
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		for _, b := range []string{"meta", "key"} {
			if tx.Bucket([]byte(b)) == nil {
				return fmt.Errorf("a database without etcd's %q bucket", b)
			}
		}
		return nil
	})
}

func oneLine(s string) string { return string(bytes.Join(bytes.Fields([]byte(s)), []byte(" "))) }

// Table prints infos as `etcdutl snapshot status -w table` does, with the
// file's SHA-256 beside.
func Table(w io.Writer, infos ...Info) {
	t := tablewriter.NewWriter(w)
	t.Header("HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE", "VERSION", "FILE SHA256")
	for _, i := range infos {
		sum := "not computed"
		if len(i.SHA256) >= 16 {
			sum = i.SHA256[:16] + "…"
		}
		t.Append(fmt.Sprintf("%x", i.Hash), fmt.Sprint(i.Revision), fmt.Sprint(i.TotalKeys), humanSize(i.TotalSize), i.Version, sum)
	}
	t.Render()
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
