package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"etcdimg/internal/snapshot"
	"etcdimg/testvm"
)

// listing is a cheap picture of a directory: every entry's mode, size
// and modification time (data disks are too large to hash each time).
func listing(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(&b, "%s %s %d %d\n", rel, info.Mode(), info.Size(), info.ModTime().UnixNano())
		return nil
	})
	return b.String()
}

// putKeys writes n keys under prefix, 100 to a transaction, each with a
// value derived from its name.
func putKeys(t testing.TB, cli *clientv3.Client, prefix string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for i := 0; i < n; i += 100 {
		var ops []clientv3.Op
		for j := i; j < min(i+100, n); j++ {
			k := fmt.Sprintf("%s%06d", prefix, j)
			ops = append(ops, clientv3.OpPut(k, "value-of-"+k))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatalf("put %s%06d…: %v", prefix, i, err)
		}
	}
}

// TestRestoreRebuildsTheClusterFromASnapshot is docs/restore.md:
// 10,000 keys, `snapshot save`, `down`, every image and data disk
// removed, broken snapshots refused with nothing written, `restore`,
// `up`: every key is back, the revision is past the snapshot's, the
// cluster ID is new, and an image of the old cluster booted on the new
// LAN with a blank disk refuses to join it.
func TestRestoreRebuildsTheClusterFromASnapshot(t *testing.T) {
	longTest(t, rankRestore)
	u := upThree(t)
	_, oldID := membersByName(t, u)
	putKeys(t, u.client(t, 0, u.admin), "/restore/", 10000)

	snap := filepath.Join(u.work, "s.db")
	stdout, stderr, code := etcdimg(t, u.work, "snapshot", "save", snap, "--out", u.out)
	if code != 0 {
		t.Fatalf("snapshot save: %s", stderr)
	}
	t.Logf("snapshot save:\n%s", stdout)
	info, err := snapshot.Verify(snap, false)
	if err != nil {
		t.Fatal(err)
	}
	// The keys written, and the backup service's own (its lock, record
	// and incarnation, under /etcdimg/).
	if info.TotalKeys < 10000 || info.TotalKeys > 10003 {
		t.Fatalf("snapshot holds %d keys, want 10000 and the backup service's", info.TotalKeys)
	}

	// restore refuses while the cluster runs.
	before := listing(t, u.out)
	if _, stderr, code := etcdimg(t, u.work, "restore", "--snapshot", snap, "--out", u.out); code != 1 || !strings.Contains(stderr, "is running") {
		t.Errorf("restore while running: exit %d: %s", code, stderr)
	}
	if _, stderr, code := etcdimg(t, u.work, "down", "--out", u.out); code != 0 {
		t.Fatalf("down: %s", stderr)
	}
	oldImage := filepath.Join(u.work, "old-etcd-3.img")
	if err := os.Rename(filepath.Join(u.out, "images", "etcd-3.img"), oldImage); err != nil {
		t.Fatal(err)
	}
	oldDisk := filepath.Join(u.work, "old-etcd-3-data.img")
	if out, err := exec.Command("cp", "--sparse=always", filepath.Join(u.out, "disks", "etcd-3-data.img"), oldDisk).CombinedOutput(); err != nil {
		t.Fatalf("keep etcd-3's old disk: %v %s", err, out)
	}
	for _, d := range []string{"images", "disks"} {
		if err := os.RemoveAll(filepath.Join(u.out, d)); err != nil {
			t.Fatal(err)
		}
	}

	// Broken snapshots: each refused, exit 1, one line, nothing written.
	good, _ := os.ReadFile(snap)
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)/2] ^= 0x01
	random := make([]byte, 1<<20)
	rand.Read(random)
	before = listing(t, u.out)
	for name, data := range map[string][]byte{
		"flipped.db":   flipped,
		"truncated.db": good[:len(good)/2],
		"empty.db":     nil,
		"random.db":    random,
		"text.db":      []byte("this is not a snapshot\n"),
	} {
		p := filepath.Join(u.work, name)
		os.WriteFile(p, data, 0o600)
		_, stderr, code := etcdimg(t, u.work, "restore", "--snapshot", p, "--out", u.out)
		if code != 1 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "snapshot") {
			t.Errorf("restore of %s: exit %d, stderr %q", name, code, stderr)
		}
		if after := listing(t, u.out); after != before {
			t.Errorf("restore of %s changed the output directory", name)
		}
	}

	stdout, stderr, code = etcdimg(t, u.work, "restore", "--snapshot", snap, "--out", u.out)
	t.Logf("restore:\n%s", stdout)
	if code != 0 {
		t.Fatalf("restore: exit %d: %s", code, stderr)
	}
	u.up(t)
	cli := u.client(t, 1, u.admin)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := cli.Get(ctx, "/restore/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 10000 {
		t.Fatalf("restored cluster holds %d keys, want 10000", len(r.Kvs))
	}
	for _, kv := range r.Kvs {
		if string(kv.Value) != "value-of-"+string(kv.Key) {
			t.Fatalf("%s = %q", kv.Key, kv.Value)
		}
	}
	if r.Header.Revision <= info.Revision {
		t.Errorf("revision %d is not past the snapshot's %d", r.Header.Revision, info.Revision)
	}
	members, newID := membersByName(t, u)
	if newID == oldID || len(members) != 3 {
		t.Errorf("cluster ID %x (old %x), members %v", newID, oldID, members)
	}
	// A quorum restores the snapshot and starts the new cluster; a member
	// that boots after that quorum already serves takes its never-used
	// seat in the restored membership instead (the leader sends it the
	// data), which is as good: the test's three members race under TCG.
	restored := 0
	for _, m := range u.state.Members {
		c := consoleOf(u, m.Name)
		switch {
		case strings.Contains(c, fmt.Sprintf("restored %d keys at revision %d", info.TotalKeys, info.Revision)):
			restored++
		case strings.Contains(c, fmt.Sprintf("cluster %x exists: already added as %x (learner false)", newID, members[m.Name])):
			t.Logf("%s booted after the restored quorum served, and took its seat in it", m.Name)
		default:
			t.Errorf("%s neither restored the snapshot nor took its seat in the restored cluster; console tail:\n%s", m.Name, lastLines(c, 20))
		}
	}
	if restored < 2 {
		t.Errorf("%d members restored the snapshot, want a quorum (2)", restored)
	}

	// In etcd-3's place on the new LAN: an image of the old cluster with
	// a blank disk refuses to join the new cluster; the new image with
	// the old cluster's data disk refuses the disk and leaves it as it is.
	if _, stderr, code := etcdimg(t, u.work, "stop", "etcd-3", "--out", u.out); code != 0 {
		t.Fatalf("stop etcd-3: %s", stderr)
	}
	u.reload(t)
	m3, _ := u.state.Member("etcd-3")
	diskFiles := ext4Files(t, oldDisk, "/etcdimg.json", "/etcd/member/snap/db")
	for _, tc := range []struct{ name, image, disk, want string }{
		{"old-image", oldImage, filepath.Join(u.work, "blank-data.img"), "refusing to join another cluster"},
		{"old-disk", m3.Image, oldDisk, "restores its snapshot onto a blank disk only"},
	} {
		vm, err := testvm.Start(testvm.Options{
			Name: tc.name, Dir: u.work, Image: tc.image, DataDisk: tc.disk,
			DataSize: 1 << 30, MemoryMB: u.state.MemoryMB, Accel: "tcg", GuestIP: netip.MustParseAddr(m3.IP), LAN: u.state.SwitchSocket,
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := vm.WaitConsole(tc.want, 4*time.Minute); err != nil {
			t.Errorf("%s: no %q: %v\n%s", tc.name, tc.want, err, vm.Tail(30))
		}
		vm.Kill()
	}
	if after := ext4Files(t, oldDisk, "/etcdimg.json", "/etcd/member/snap/db"); after != diskFiles {
		t.Errorf("the refused old data disk's files changed:\nbefore %s\nafter  %s", diskFiles, after)
	}
	if after, _ := membersByName(t, u); len(after) != 3 || after["etcd-3"] != members["etcd-3"] {
		t.Errorf("members after the old image's boot: %v, want %v", after, members)
	}
	if _, stderr, code := etcdimg(t, u.work, "start", "etcd-3", "--out", u.out); code != 0 {
		t.Fatalf("start etcd-3: %s", stderr)
	}
	u.reload(t)
	waitHealthy(t, u)
}

// ext4Files reads files from an ext4 disk image with e2fsprogs' debugfs
// and returns their SHA-256s: what a mount's own bookkeeping (mount
// count, times) does not change.
func ext4Files(t *testing.T, disk string, paths ...string) string {
	t.Helper()
	var b strings.Builder
	for _, p := range paths {
		out, err := exec.Command("debugfs", "-R", "cat "+p, disk).Output()
		if err != nil || len(out) == 0 {
			t.Fatalf("debugfs cat %s: %v", p, err)
		}
		fmt.Fprintf(&b, "%s=%x ", p, sha256.Sum256(out))
	}
	return b.String()
}
