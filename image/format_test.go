package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestEveryFormatIsReproducibleAndReadable writes a generic image in
// every format twice: each file has the same bytes both times, qemu-img
// (Debian's qemu-utils) checks it where the format has checks, reads the
// same virtual size and the same contents as the raw image, and the GCE
// tarball holds disk.raw alone, in the GNU format.
func TestEveryFormatIsReproducibleAndReadable(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img is missing: run `make deps`")
	}
	m := Member{Cluster: "c", Name: "etcdimg-aws", Platform: "aws"}
	var runs [2][]Built
	for i := range runs {
		built, err := WriteAll(filepath.Join(t.TempDir(), "images"), []Member{m}, fakeBoot(), Formats, FormatOptions{})
		if err != nil {
			t.Fatal(err)
		}
		runs[i] = built
	}
	if len(runs[0]) != len(Formats) {
		t.Fatalf("%d files for %d formats", len(runs[0]), len(Formats))
	}
	raw := runs[0][0].Path
	rawSize := runs[0][0].Size
	if filepath.Base(raw) != "etcdimg-aws.raw" || rawSize%mib != 0 {
		t.Fatalf("raw image %s, %d bytes", raw, rawSize)
	}
	for i, b := range runs[0] {
		f, _ := FormatNamed(b.Format)
		t.Run(b.Format, func(t *testing.T) {
			one, _ := os.ReadFile(b.Path)
			two, _ := os.ReadFile(runs[1][i].Path)
			if !bytes.Equal(one, two) {
				t.Errorf("%s: two builds differ", b.Format)
			}
			if filepath.Base(b.Path) != "etcdimg-aws"+f.Ext {
				t.Errorf("file %s", b.Path)
			}
			if st, _ := os.Stat(b.Path); st.Mode().Perm() != 0o600 {
				t.Errorf("mode %o", st.Mode().Perm())
			}
			if f.QemuFormat == "" {
				return
			}
			if f.Name == "qcow2" || f.Name == "vmdk" {
				if out, err := exec.Command("qemu-img", "check", "-f", f.QemuFormat, b.Path).CombinedOutput(); err != nil {
					t.Errorf("qemu-img check: %v\n%s", err, out)
				}
			}
			out, err := exec.Command("qemu-img", "info", "--output=json", "-f", f.QemuFormat, b.Path).Output()
			if err != nil {
				t.Fatalf("qemu-img info: %v", err)
			}
			var info struct {
				VirtualSize int64 `json:"virtual-size"`
			}
			json.Unmarshal(out, &info)
			if info.VirtualSize != rawSize {
				t.Errorf("virtual size %d, raw image %d", info.VirtualSize, rawSize)
			}
			if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", f.QemuFormat, raw, b.Path).CombinedOutput(); err != nil {
				t.Errorf("qemu-img compare: %v\n%s", err, out)
			}
		})
	}
	gce := runs[0][3].Path
	fh, _ := os.Open(gce)
	defer fh.Close()
	zr, err := gzip.NewReader(fh)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	hdr, err := tr.Next()
	if err != nil || hdr.Name != "disk.raw" || hdr.Format != tar.FormatGNU || hdr.Size != rawSize {
		t.Fatalf("first member %+v: %v", hdr, err)
	}
	data, _ := io.ReadAll(tr)
	want, _ := os.ReadFile(raw)
	if !bytes.Equal(data, want) {
		t.Error("disk.raw is not the raw image")
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Errorf("a second member: %v", err)
	}
	vhd, _ := os.ReadFile(runs[0][2].Path)
	footer := vhd[len(vhd)-512:]
	if int64(len(vhd)) != rawSize+512 || string(footer[:8]) != "conectix" || binary.BigEndian.Uint32(footer[60:]) != 2 {
		t.Errorf("vhd: %d bytes, footer %q", len(vhd), footer[:8])
	}
}

func TestParseFormats(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"raw", "raw", ""},
		{"qcow2, vhd,qcow2", "qcow2 vhd", ""},
		{"gce,vmdk,raw", "gce vmdk raw", ""},
		{"qcow", "", `--format: unknown format "qcow"`},
		{" , ", "", "--format: empty"},
	} {
		got, err := ParseFormats(tc.in)
		var names []string
		for _, f := range got {
			names = append(names, f.Name)
		}
		if strings.Join(names, " ") != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("ParseFormats(%q) = %v, %v; want %q, %q", tc.in, names, err, tc.want, tc.err)
		}
	}
}
