package datadisk

import (
	"bytes"
	"io"
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

// TestDirectReadsMatchPlainReads: the disk rule's O_DIRECT reader gives
// the bytes a plain read gives, at unaligned offsets and lengths and up
// to the device's end, on a loop device.
func TestDirectReadsMatchPlainReads(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk.img")
	data := make([]byte, 1<<20+4096)
	for i := range data {
		data[i] = byte(i*7 + i>>9)
	}
	os.WriteFile(p, data, 0o600)
	out, err := exec.Command("losetup", "--find", "--show", p).Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run()
	r, c, err := openDirect(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := r.(directReader); !ok {
		t.Fatalf("a loop device was not opened for direct reads")
	}
	for _, tc := range []struct{ off, n int64 }{{0, 512}, {1024, 1024}, {1, 3}, {4095, 2}, {8192, 8192}, {int64(len(data)) - 10, 10}, {1 << 20, 4096}} {
		got := make([]byte, tc.n)
		if n, err := r.ReadAt(got, tc.off); err != nil || int64(n) != tc.n {
			t.Errorf("read %d at %d: %d bytes, %v", tc.n, tc.off, n, err)
		}
		if !bytes.Equal(got, data[tc.off:tc.off+tc.n]) {
			t.Errorf("read %d at %d: wrong bytes", tc.n, tc.off)
		}
	}
	if n, err := r.ReadAt(make([]byte, 100), int64(len(data))-50); n != 50 || err != io.EOF {
		t.Errorf("read across the end: %d bytes, %v; want 50, EOF", n, err)
	}
}
