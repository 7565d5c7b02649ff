package kernelfs

import "testing"

// TestMountedTellsMountPointsApart: /proc is a mount point on any Linux
// host; a fresh directory, and a file system's root seen from itself,
// are not.
func TestMountedTellsMountPointsApart(t *testing.T) {
	for dir, want := range map[string]bool{"/proc": true, t.TempDir(): false, "/": false, "/no/such/dir": false} {
		if got := Mounted(dir); got != want {
			t.Errorf("Mounted(%s) = %v, want %v", dir, got, want)
		}
	}
}
