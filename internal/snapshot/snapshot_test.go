package snapshot

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"etcdimg/internal/etcdtest"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"
	csnap "go.etcd.io/etcd/client/v3/snapshot"
	"go.uber.org/zap"
)

// freeURL is a plain-HTTP loopback URL on a free port.
func freeURL(t *testing.T) url.URL { return etcdtest.FreeURL(t, "http") }

// realSnapshot runs a real etcd (embedded), writes 100 keys and deletes
// 10 of them, and saves a snapshot as etcdctl does.
func realSnapshot(t *testing.T) string { return snapshotOf(t, 100, 10) }

// snapshotOf saves a snapshot of a real etcd after puts keys written and
// deletes of them deleted.
func snapshotOf(t *testing.T, puts, deletes int) string {
	t.Helper()
	_, cu := etcdtest.Start(t, nil)
	cc := clientv3.Config{Endpoints: []string{cu}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	cli, err := clientv3.New(cc)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range puts {
		if _, err := cli.Put(ctx, fmt.Sprintf("/k/%03d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range deletes {
		if _, err := cli.Delete(ctx, fmt.Sprintf("/k/%03d", i)); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "snap.db")
	if _, err := csnap.SaveWithVersion(ctx, zap.NewNop(), cc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestVerifyReadsARealSnapshot: a snapshot from a real etcd verifies, with
// its revision (1 + 100 puts + 10 deletes) and its 90 live keys.
func TestVerifyReadsARealSnapshot(t *testing.T) {
	path := realSnapshot(t)
	info, err := Verify(path, false)
	if err != nil {
		t.Fatal(err)
	}
	if !info.HasHash || info.Revision != 111 || info.TotalKeys != 90 || len(info.SHA256) != 64 || info.Version == "" {
		t.Errorf("info %+v", info)
	}
	var b strings.Builder
	Table(&b, info)
	if !strings.Contains(b.String(), " 111 ") || !strings.Contains(b.String(), "TOTAL KEYS") {
		t.Errorf("table:\n%s", b.String())
	}
}

// TestVerifyAcceptsAnEmptyCluster: a cluster that never stored a key has
// no revision in its key bucket, and its snapshot is still etcd's (found
// by `snapshot save` on a fresh cluster).
func TestVerifyAcceptsAnEmptyCluster(t *testing.T) {
	info, err := Verify(snapshotOf(t, 0, 0), false)
	if err != nil || info.TotalKeys != 0 {
		t.Fatalf("empty cluster: %+v %v", info, err)
	}
}

// TestVerifyRefusesBrokenSnapshots: each kind of damage is refused with
// its own reason.
func TestVerifyRefusesBrokenSnapshots(t *testing.T) {
	good, err := os.ReadFile(realSnapshot(t))
	if err != nil {
		t.Fatal(err)
	}
	random := make([]byte, len(good))
	rand.Read(random)
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)/3] ^= 0x40
	noHash := good[:len(good)-32]
	dir := t.TempDir()
	for _, tc := range []struct {
		name     string
		data     []byte
		skipHash bool
		want     string
	}{
		{"one byte flipped", flipped, false, "fails etcd's integrity hash"},
		{"truncated", good[:len(good)-100], false, "has no integrity hash"},
		{"truncated to a hashed size", good[:len(good)-512], false, "fails etcd's integrity hash"},
		{"empty", nil, false, "is empty"},
		{"random bytes", random, false, "fails etcd's integrity hash"},
		{"random bytes, hash check skipped", random[:len(random)-32], true, "is not an etcd snapshot"},
		{"a text file", []byte("not a snapshot\n"), false, "has no integrity hash"},
		{"a database without its hash", noHash, false, "pass --skip-hash-check"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			os.WriteFile(p, tc.data, 0o600)
			_, err := Verify(p, tc.skipHash)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
	// A database copied from a member's disk has no hash: accepted when
	// asked to skip the check.
	p := filepath.Join(dir, "member-db")
	os.WriteFile(p, noHash, 0o600)
	if info, err := Verify(p, true); err != nil || info.HasHash || info.TotalKeys != 90 {
		t.Errorf("db without hash, skip-hash-check: %+v %v", info, err)
	}
}

// TestVerifyRefusesAForeignDatabase: a bbolt database that is not etcd's,
// even with a correct hash at its end, is refused.
func TestVerifyRefusesAForeignDatabase(t *testing.T) {
	p := filepath.Join(t.TempDir(), "other.db")
	db, err := bolt.Open(p, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucket([]byte("something-else"))
		return err
	})
	db.Close()
	b, _ := os.ReadFile(p)
	sum := sha256.Sum256(b)
	os.WriteFile(p, append(b, sum[:]...), 0o600)
	if _, err := Verify(p, false); err == nil || !strings.Contains(err.Error(), `without etcd's "meta" bucket`) {
		t.Errorf("a foreign database: %v", err)
	}
}

// within runs f in a goroutine and fails the test if it has not returned
// after a generous bound: the point is that it returns at all.
func within[T any](t *testing.T, what string, f func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() { v, err := f(); done <- result{v, err} }()
	select {
	case r := <-done:
		return r.v, r.err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not return within 30 s", what)
	}
	panic("unreachable")
}

// TestVerifyRefusesAFIFOAtOnce: `snapshot status FIFO` is refused before
// the open, which would wait for a writer for ever (issue 21).
func TestVerifyRefusesAFIFOAtOnce(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "snap.db")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, skip := range []bool{false, true} {
		_, err := within(t, fmt.Sprintf("Verify(FIFO, skipHash %v)", skip), func() (Info, error) { return Verify(fifo, skip) })
		if err == nil || !strings.Contains(err.Error(), "is not a regular file") {
			t.Errorf("skipHash %v: %v, want it refused as not a regular file", skip, err)
		}
	}
	if _, err := within(t, "Status(/dev/zero)", func() (Info, error) { return Status("/dev/zero", true) }); err == nil || !strings.Contains(err.Error(), "is not a regular file") {
		t.Errorf("/dev/zero: %v", err)
	}
}

// TestSkipHashCheckDoesNotReadAHugeFile: with the hash check skipped, a
// 100 GiB sparse file that is no database is refused without being read
// through (it was hashed whole first, for minutes; issue 21), and Status
// reads no file whole for a digest the operator asked to skip.
func TestSkipHashCheckDoesNotReadAHugeFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "huge.db")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(100 << 30); err != nil {
		t.Skipf("no sparse 100 GiB file here: %v", err)
	}
	f.Close()
	for _, tc := range []struct {
		name   string
		verify func(string, bool) (Info, error)
	}{{"Verify", Verify}, {"Status", Status}} {
		_, err := within(t, tc.name+"(100 GiB sparse, skipHash)", func() (Info, error) { return tc.verify(p, true) })
		if err == nil || !strings.Contains(err.Error(), "is not an etcd snapshot") {
			t.Errorf("%s: %v, want it refused as not a snapshot", tc.name, err)
		}
	}
	// A real database without etcd's hash: Status checks it and leaves
	// the file's digest out; Verify (restore's) still has it.
	good, err := os.ReadFile(realSnapshot(t))
	if err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(t.TempDir(), "member.db")
	os.WriteFile(db, good[:len(good)-32], 0o600)
	st, err := Status(db, true)
	if err != nil || st.SHA256 != "" || st.TotalKeys != 90 {
		t.Errorf("Status(member db, skipHash) = %+v, %v; want 90 keys and no digest", st, err)
	}
	var b strings.Builder
	Table(&b, st)
	if !strings.Contains(b.String(), "not computed") {
		t.Errorf("table without a digest:\n%s", b.String())
	}
	if v, err := Verify(db, true); err != nil || len(v.SHA256) != 64 {
		t.Errorf("Verify(member db, skipHash) = %+v, %v; want its digest", v, err)
	}
}
