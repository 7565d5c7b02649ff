package datadisk

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/backend/file"

	"etcdimg/internal/layout"
)

const testDiskSize = 1 << 30

// sparse makes a blank sparse disk image.
func sparse(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if b, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, b)
	}
}

// zero overwrites n bytes at off.
func zero(t *testing.T, path string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, n), off); err != nil {
		t.Fatal(err)
	}
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func inspectFile(t *testing.T, path string) (string, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, _ := deviceSize(f)
	return inspect(f, size)
}

// format runs the appliance's first format on a disk image.
func format(t *testing.T, path string) error {
	t.Helper()
	st, err := file.OpenFromPath(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	fi, _ := os.Stat(path)
	return formatData(st, fi.Size(), intent{Cluster: "c", Member: "etcd-1"})
}

// TestDiskRuleOnRealDiskImages makes disk images with the system's own
// tools (sfdisk, mkfs.ext4, cryptsetup) and checks that only the blank
// and the appliance's own are ever classified as formattable or ours.
func TestDiskRuleOnRealDiskImages(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(t *testing.T, p string)
		want string // a content, or a substring of the refusal
	}{
		{"blank", func(*testing.T, string) {}, contentBlank},
		{"ours", func(t *testing.T, p string) {
			if err := format(t, p); err != nil {
				t.Fatal(err)
			}
			if err := ClearIntent(p); err != nil {
				t.Fatal(err)
			}
		}, contentOurs},
		{"ours, format not yet confirmed", func(t *testing.T, p string) {
			if err := format(t, p); err != nil {
				t.Fatal(err)
			}
		}, contentInterrupted},
		{"ext4 labelled etcd-data by mkfs", func(t *testing.T, p string) {
			run(t, "mkfs.ext4", "-q", "-F", "-L", layout.DataLabel, p)
		}, contentOurs},
		{"foreign ext4 label", func(t *testing.T, p string) {
			run(t, "mkfs.ext4", "-q", "-F", "-L", "precious", p)
		}, `labelled "precious"`},
		{"ext4 without a label", func(t *testing.T, p string) {
			run(t, "mkfs.ext4", "-q", "-F", p)
		}, `labelled ""`},
		{"GPT with a partition", func(t *testing.T, p string) {
			run(t, "sh", "-c", "echo 'label: gpt\n,,L' | sfdisk -q "+p)
		}, "GPT"},
		{"wiped GPT over ext4 at 1 MiB", func(t *testing.T, p string) {
			run(t, "sh", "-c", "echo 'label: gpt\nstart=2048,type=L' | sfdisk -q "+p)
			run(t, "mkfs.ext4", "-q", "-F", "-E", "offset=1048576", "-L", "precious", p, "512M")
			// sgdisk --zap-all: the first 34 and the last 33 sectors.
			zero(t, p, 0, 34*512)
			zero(t, p, testDiskSize-33*512, 33*512)
		}, "ext2/3/4 in a partition at 1024 KiB"},
		{"backup GPT only", func(t *testing.T, p string) {
			run(t, "sh", "-c", "echo 'label: gpt\n,,L' | sfdisk -q "+p)
			zero(t, p, 0, 34*512)
		}, "backup GPT"},
		{"LUKS header", func(t *testing.T, p string) {
			key := filepath.Join(t.TempDir(), "key")
			os.WriteFile(key, []byte("secret"), 0o600)
			run(t, "cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", key, p)
		}, "LUKS"},
		{"data only in the middle", func(t *testing.T, p string) {
			writeAt(t, p, 512<<20, []byte("precious"))
		}, "holds data at byte 536870912"},
		{"data near the end", func(t *testing.T, p string) {
			writeAt(t, p, testDiskSize-5<<20, []byte{1})
		}, "holds data at byte"},
		{"XFS superblock in a partition at 2 MiB", func(t *testing.T, p string) {
			writeAt(t, p, 2<<20, []byte("XFSB"))
		}, "XFS in a partition at 2048 KiB"},
		{"swap", func(t *testing.T, p string) {
			writeAt(t, p, 4086, []byte("SWAPSPACE2"))
		}, "swap"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := sparse(t, testDiskSize)
			tc.make(t, p)
			got, err := inspectFile(t, p)
			switch {
			case tc.want == contentBlank || tc.want == contentOurs || tc.want == contentInterrupted:
				if err != nil || got != tc.want {
					t.Errorf("got %q, %v; want %q", got, err, tc.want)
				}
			case err == nil:
				t.Errorf("classified %q; want a refusal naming %q", got, tc.want)
			case !strings.Contains(err.Error(), tc.want):
				t.Errorf("refused with %q; want it to name %q", err, tc.want)
			}
		})
	}
}

// cutStorage is a disk whose writes stop for good after budget bytes:
// a power cut in the middle of a format.
type cutStorage struct {
	backend.Storage
	budget *atomic.Int64
}

var errPowerCut = errors.New("power cut")

func (c cutStorage) Writable() (backend.WritableFile, error) {
	w, err := c.Storage.Writable()
	if err != nil {
		return nil, err
	}
	return cutFile{w, c.budget}, nil
}

// Sys hides the file: a sync after the cut must not reach it either.
func (c cutStorage) Sys() (*os.File, error) { return nil, errors.New("no") }

type cutFile struct {
	backend.WritableFile
	budget *atomic.Int64
}

func (c cutFile) WriteAt(p []byte, off int64) (int, error) {
	if c.budget.Add(-int64(len(p))) < 0 {
		return 0, errPowerCut
	}
	return c.WritableFile.WriteAt(p, off)
}

// TestFirstFormatCutAtAnyPointIsResumed cuts the first format after
// various amounts written, from nothing to all of it, and checks every
// time that the disk is then either still blank or recognised as an
// interrupted format of ours, formatted again, and ends e2fsck-clean
// with the data label; never refused, never mistaken for data.
func TestFirstFormatCutAtAnyPointIsResumed(t *testing.T) {
	// How much a whole format writes.
	var total atomic.Int64
	total.Store(1 << 62)
	p := sparse(t, testDiskSize)
	st, _ := file.OpenFromPath(p, false)
	if err := formatData(cutStorage{st, &total}, testDiskSize, intent{Cluster: "c", Member: "etcd-1"}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	written := 1<<62 - total.Load()
	t.Logf("a first format of 1 GiB writes %d KiB", written>>10)

	for _, budget := range []int64{0, 4095, 4096, 4096 + 1024, 4096 + 64<<10, written / 3, written / 2, written - 4096, written} {
		p := sparse(t, testDiskSize)
		var b atomic.Int64
		b.Store(budget)
		st, err := file.OpenFromPath(p, false)
		if err != nil {
			t.Fatal(err)
		}
		err = formatData(cutStorage{st, &b}, testDiskSize, intent{Cluster: "c", Member: "etcd-1"})
		st.Close()
		if budget < written && err == nil {
			t.Fatalf("budget %d: the format finished without being cut", budget)
		}
		got, err := inspectFile(t, p)
		want := contentInterrupted
		if budget < 4096 {
			want = contentBlank // the record itself was not written
		}
		if err != nil || got != want {
			t.Fatalf("cut after %d bytes: classified %q, %v; want %q", budget, got, err, want)
		}
		if err := format(t, p); err != nil {
			t.Fatalf("cut after %d bytes: format again: %v", budget, err)
		}
		if out, err := exec.Command("e2fsck", "-fn", p).CombinedOutput(); err != nil {
			t.Fatalf("cut after %d bytes: e2fsck after the second format: %v\n%s", budget, err, out)
		}
	}
}

// TestIntentRecordIsExact: only the record itself, whole, is taken for
// an interrupted format; a damaged copy is data, and refused.
func TestIntentRecordIsExact(t *testing.T) {
	rec := encodeIntent(intent{Cluster: "c", Member: "etcd-1", Size: testDiskSize})
	if in, ok := decodeIntent(rec); !ok || in.Member != "etcd-1" {
		t.Fatalf("decode: %+v %v", in, ok)
	}
	bad := bytes.Clone(rec)
	bad[len(intentMagic)+10] ^= 1
	if _, ok := decodeIntent(bad); ok {
		t.Error("a damaged record was accepted")
	}
	p := sparse(t, testDiskSize)
	writeAt(t, p, testDiskSize-intentSpace, bad)
	if _, err := inspectFile(t, p); err == nil {
		t.Error("a disk with a damaged record was called formattable")
	}
	// A record for another size: the disk was copied or grown.
	p = sparse(t, testDiskSize)
	writeAt(t, p, testDiskSize-intentSpace, encodeIntent(intent{Cluster: "c", Member: "etcd-1", Size: 2 * testDiskSize}))
	if _, err := inspectFile(t, p); err == nil || !strings.Contains(err.Error(), "changed size") {
		t.Errorf("a record of another size: %v", err)
	}
}

var _ io.ReaderAt = (*os.File)(nil)

// failingDisk is a disk image whose reads fail with err wherever they
// touch [from, to): a disk with bad sectors there. It is the disk rule's
// own input, a file read through the rule's io.ReaderAt.
type failingDisk struct {
	f        *os.File
	from, to int64
	err      error
}

func (d failingDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < d.to && off+int64(len(p)) > d.from {
		return 0, d.err
	}
	return d.f.ReadAt(p, off)
}

// TestAReadErrorIsNeverBlank: a disk is blank only when every byte the
// rule reads was read and is zero. A read that fails (EIO from a bad
// sector, wherever it is) or comes back short (a device smaller than it
// said) proves nothing: the disk is refused, never formatted; also
// through the window reader Prepare reads with.
func TestAReadErrorIsNeverBlank(t *testing.T) {
	const size = testDiskSize
	for _, tc := range []struct {
		name     string
		from, to int64 // the bad range
		short    int64 // the device really is this long (0: size)
		want     error // what the refusal wraps
	}{
		{name: "EIO in the middle", from: size / 2, to: size/2 + 4096, want: syscall.EIO},
		{name: "EIO over all between the windows", from: zeroWindow, to: size - zeroWindow, want: syscall.EIO},
		{name: "EIO in the first window", from: 8 * mib, to: 8*mib + 512, want: syscall.EIO},
		{name: "EIO in the last window", from: size - 8*mib, to: size - 8*mib + 512, want: syscall.EIO},
		{name: "EIO at the first-format record", from: size - intentSpace, to: size - intentSpace + 1, want: syscall.EIO},
		{name: "EIO at the superblock", from: 1024, to: 2048, want: syscall.EIO},
		{name: "shorter than it says", short: size - 64*mib, want: io.ErrUnexpectedEOF},
	} {
		for _, windowed := range []bool{false, true} {
			name := tc.name
			if windowed {
				name += ", through the window reader"
			}
			t.Run(name, func(t *testing.T) {
				p := sparse(t, size)
				if tc.short != 0 {
					if err := os.Truncate(p, tc.short); err != nil {
						t.Fatal(err)
					}
				}
				f, err := os.Open(p)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				var r io.ReaderAt = failingDisk{f, tc.from, tc.to, syscall.EIO}
				if windowed {
					w, err := newWindowReader(r, size, zeroWindow+mib, zeroWindow)
					if err != nil {
						if !errors.Is(err, tc.want) {
							t.Fatalf("window reader: %v, want it to wrap %v", err, tc.want)
						}
						return // refused before the rule ran
					}
					r = w
				}
				got, err := inspect(r, size)
				if err == nil {
					t.Fatalf("classified %q; want a refusal", got)
				}
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "not provably blank") {
					t.Errorf("refused with %q; want it to wrap %v and say not provably blank", err, tc.want)
				}
			})
		}
	}
}
