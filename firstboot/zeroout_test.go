package firstboot

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/backend/file"
)

// TestFormatZeroesThroughTheDevice: the first format sends the ext4's
// zeros (journal, inode tables) as zero-outs, on a file and on a block
// device (a loop device over a file), and the bytes are zeros after it
// whatever the disk held before: a disk full of 0xA5 formats
// e2fsck-clean. On 256 MiB, the 8 MiB journal (less its first block)
// goes as zero-outs.
func TestFormatZeroesThroughTheDevice(t *testing.T) {
	const size = 256 << 20
	for _, c := range []struct {
		name string
		fill byte
		loop bool
	}{
		{"blank file", 0, false},
		{"file full of 0xA5", 0xA5, false},
		{"blank loop device", 0, true},
		{"loop device full of 0xA5", 0xA5, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "disk.img")
			if c.fill != 0 {
				os.WriteFile(p, bytes.Repeat([]byte{c.fill}, size), 0o600)
			} else {
				f, _ := os.Create(p)
				f.Truncate(size)
				f.Close()
			}
			dev := p
			if c.loop {
				out, err := exec.Command("losetup", "--find", "--show", p).Output()
				if err != nil {
					t.Fatalf("losetup: %v", err)
				}
				dev = strings.TrimSpace(string(out))
				t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
			}
			st, err := file.OpenFromPath(dev, false)
			if err != nil {
				t.Fatal(err)
			}
			var zeroed int64
			err = formatData(zeroingStorage{st, &zeroed}, size, intent{Cluster: "c", Member: "etcd-1"})
			st.Close()
			if err != nil {
				t.Fatal(err)
			}
			if zeroed < 7<<20 {
				t.Errorf("%d bytes zeroed by the device, want the journal's at least", zeroed)
			}
			if out, err := exec.Command("e2fsck", "-fn", dev).CombinedOutput(); err != nil {
				t.Fatalf("e2fsck: %v\n%s", err, out)
			}
		})
	}
}
