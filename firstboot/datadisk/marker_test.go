package datadisk

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"etcdimg/internal/layout"
)

func TestAdoptLegacyLayout(t *testing.T) {
	for _, tc := range []struct {
		name      string
		legacy    bool // member/ at the disk's root
		target    bool // etcd/member already there
		emptyDir  bool // etcd/ made, rename not done (interrupted)
		wantMoved bool
		wantErr   bool
	}{
		{name: "new layout", target: true},
		{name: "blank disk"},
		{name: "legacy disk", legacy: true, wantMoved: true},
		{name: "interrupted move", legacy: true, emptyDir: true, wantMoved: true},
		{name: "both", legacy: true, target: true, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			legacy, data := filepath.Join(root, "member"), filepath.Join(root, "etcd")
			if tc.legacy {
				os.MkdirAll(filepath.Join(legacy, "wal"), 0o700)
				os.WriteFile(filepath.Join(legacy, "wal", "0.wal"), []byte("wal"), 0o600)
			}
			if tc.emptyDir {
				os.MkdirAll(data, 0o700)
			}
			if tc.target {
				os.MkdirAll(filepath.Join(data, "member", "wal"), 0o700)
			}
			moved, err := adoptLegacyLayout(legacy, data)
			if (err != nil) != tc.wantErr || moved != tc.wantMoved {
				t.Fatalf("moved %v, err %v; want moved %v, error %v", moved, err, tc.wantMoved, tc.wantErr)
			}
			if tc.wantErr {
				if _, err := os.Stat(legacy); err != nil {
					t.Fatalf("refusal touched the legacy directory: %v", err)
				}
				return
			}
			if tc.wantMoved {
				if b, err := os.ReadFile(filepath.Join(data, "member", "wal", "0.wal")); err != nil || string(b) != "wal" {
					t.Fatalf("WAL not moved: %q %v", b, err)
				}
				if !hasEtcdData(data) {
					t.Fatal("hasEtcdData false after the move")
				}
			}
		})
	}
}

// tree lists every file and directory under root with its mode and
// content: two equal trees are the same bytes in the same places.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		v := info.Mode().String()
		if info.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			v += " " + string(b)
		}
		out[rel] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestClaimLeavesAForeignDiskUntouched: a disk of another member or
// cluster, or with an unreadable marker, is refused before anything on
// it changes: no legacy member directory moved, no backups directory
// made, no marker written. This member's own disk, or an unclaimed one,
// is adopted and marked as before.
func TestClaimLeavesAForeignDiskUntouched(t *testing.T) {
	me := Owner{Member: "etcd-1", Cluster: "c-token"}
	markerOf := func(cluster, member string) string {
		b, _ := json.Marshal(Marker{Cluster: cluster, Member: member})
		return string(b)
	}
	for _, tc := range []struct {
		name    string
		marker  string // "" for none
		legacy  bool   // etcd's data at the disk's root (member/)
		refused string // a substring of the refusal, or "" for a claim
		hasData bool
	}{
		{name: "another cluster's disk, legacy layout", marker: markerOf("c-other", "etcd-1"), legacy: true, refused: "belongs to member etcd-1 of cluster c-other"},
		{name: "another member's disk, legacy layout", marker: markerOf("c-token", "etcd-2"), legacy: true, refused: "belongs to member etcd-2"},
		{name: "another member's disk", marker: markerOf("c-token", "etcd-2"), refused: "belongs to member etcd-2"},
		{name: "unreadable marker, legacy layout", marker: "{not json", legacy: true, refused: "not readable"},
		{name: "own disk, found damaged", marker: `{"cluster":"c-token","member":"etcd-1!damaged","refused":"etcd-2 and etcd-3 agree against it"}`, refused: "found damaged (etcd-2 and etcd-3 agree against it); etcd does not start from it, nothing on it was changed. Heal the member from its peers: etcdimg replace etcd-1"},
		{name: "own disk of an older release's view, found damaged", marker: markerOf("c-token", "etcd-1"+RefusedSuffix), refused: "found damaged"},
		{name: "own disk, legacy layout", marker: markerOf("c-token", "etcd-1"), legacy: true, hasData: true},
		{name: "unclaimed disk with legacy data", legacy: true, hasData: true},
		{name: "unclaimed blank disk"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			d := onDisk(root)
			if tc.marker != "" {
				os.WriteFile(d.markerFile, []byte(tc.marker), 0o600)
			}
			if tc.legacy {
				os.MkdirAll(filepath.Join(d.legacyMemberDir, "wal"), 0o700)
				os.WriteFile(filepath.Join(d.legacyMemberDir, "wal", "0000000000000000-0000000000000000.wal"), []byte("wal"), 0o600)
			}
			before := tree(t, root)
			madeWritable := false
			hasData, m, _, err := claimDiskAt(d, me, func() error { madeWritable = true; return nil })
			if tc.refused != "" {
				if err == nil || !strings.Contains(err.Error(), tc.refused) {
					t.Fatalf("claim: %v; want a refusal naming %q", err, tc.refused)
				}
				if madeWritable {
					t.Error("the refused disk was made writable")
				}
				if after := tree(t, root); !maps.Equal(before, after) {
					t.Fatalf("the refused disk changed:\nbefore %v\nafter  %v", before, after)
				}
				return
			}
			if err != nil || hasData != tc.hasData || m.Member != "etcd-1" || m.Cluster != "c-token" {
				t.Fatalf("claim: data %v, marker %+v, %v; want data %v, marker of c-token/etcd-1", hasData, m, err, tc.hasData)
			}
			for _, p := range []string{d.markerFile, d.backupDir} {
				if _, err := os.Stat(p); err != nil {
					t.Errorf("after the claim: %v", err)
				}
			}
			if _, err := os.Stat(d.legacyMemberDir); tc.legacy && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the legacy member directory is still at the disk's root: %v", err)
			}
		})
	}
}

// TestARefusedDiskImageIsUnchanged: a real ext4 data disk (mkfs.ext4 on
// a loop device) of another member, in the legacy layout, mounted as
// Prepare mounts it and refused by the claim, is the same bytes
// after as before. This member's own disk is made writable and claimed
// on the same path.
func TestARefusedDiskImageIsUnchanged(t *testing.T) {
	for _, tc := range []struct {
		name, owner string
		refused     bool
	}{
		{"another member's", "etcd-2", true},
		{"this member's", "etcd-1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			content := t.TempDir()
			b, _ := json.Marshal(Marker{Cluster: "c-token", Member: tc.owner})
			os.WriteFile(filepath.Join(content, "etcdimg.json"), b, 0o600)
			os.MkdirAll(filepath.Join(content, "member", "wal"), 0o700)
			os.WriteFile(filepath.Join(content, "member", "wal", "0000000000000000-0000000000000000.wal"), []byte("wal"), 0o600)
			img := sparse(t, 64<<20)
			run(t, "mkfs.ext4", "-q", "-F", "-L", layout.DataLabel, "-d", content, img)
			before := fileSum(t, img)

			out, err := exec.Command("losetup", "--find", "--show", img).Output()
			if err != nil {
				t.Fatalf("losetup: %v", err)
			}
			dev := strings.TrimSpace(string(out))
			t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
			mnt := filepath.Join(t.TempDir(), "data")
			if err := mountReadOnly(dev, mnt); err != nil {
				t.Fatal(err)
			}
			mounted := true
			t.Cleanup(func() {
				if mounted {
					unix.Unmount(mnt, 0)
				}
			})
			hasData, _, _, err := claimDiskAt(onDisk(mnt), Owner{Member: "etcd-1", Cluster: "c-token"}, func() error { return remountWritable(mnt) })
			if tc.refused == (err == nil) {
				t.Fatalf("claim: %v; want refused %v", err, tc.refused)
			}
			if !tc.refused && (!hasData || !hasEtcdData(onDisk(mnt).dataDir)) {
				t.Fatalf("own disk: data %v, etcd's data not moved into place", hasData)
			}
			if err := unix.Unmount(mnt, 0); err != nil {
				t.Fatal(err)
			}
			mounted = false
			exec.Command("losetup", "-d", dev).Run()
			if after := fileSum(t, img); (after == before) != tc.refused {
				t.Errorf("image unchanged: %v; want %v", after == before, tc.refused)
			}
		})
	}
}

func fileSum(t *testing.T, path string) [sha256.Size]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestAMarkedDamagedDiskIsRefusedByEveryRelease: MarkRefused keeps the
// cluster and the cluster ID, and makes the member's name one no release
// takes as its own: this one says why, and a claim by the name alone (an
// older release's rule) is a mismatch.
func TestAMarkedDamagedDiskIsRefusedByEveryRelease(t *testing.T) {
	root := t.TempDir()
	d := onDisk(root)
	os.WriteFile(d.markerFile, []byte(`{"cluster":"c-token","member":"etcd-1","clusterID":"abc"}`), 0o600)
	if err := markRefusedAt(d, "why"); err != nil {
		t.Fatal(err)
	}
	if err := markRefusedAt(d, "why again"); err != nil {
		t.Fatal(err)
	}
	var m Marker
	b, _ := os.ReadFile(d.markerFile)
	if err := json.Unmarshal(b, &m); err != nil || m.Member != "etcd-1"+RefusedSuffix || m.Cluster != "c-token" || m.ClusterID != "abc" || m.Refused != "why again" {
		t.Fatalf("the marked marker: %s (%v)", b, err)
	}
	if m.Member == "etcd-1" {
		t.Fatal("an older release would take the disk as etcd-1's")
	}
	if _, _, _, err := claimDiskAt(d, Owner{Member: "etcd-1", Cluster: "c-token"}, func() error { return nil }); err == nil || !strings.Contains(err.Error(), "found damaged (why again)") {
		t.Errorf("claim of a disk marked damaged: %v", err)
	}
}
