package firstboot

import (
	"os"
	"path/filepath"
	"testing"
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
