package image

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"

	"etcdimg/internal/layout"
	"etcdimg/internal/slot"
)

// TestNodeBinaryGoesOnTheESP: the initramfs holds the small init as
// /init, the modules and links that run etcd's programs from the node
// binary on the ESP, and not the node binary itself; the ESP of every
// member, generic cloud images too, holds it at layout.NodeBinaryPath.
func TestNodeBinaryGoesOnTheESP(t *testing.T) {
	initBin := []byte("\x7fELF small init")
	node := []byte("\x7fELF the node binary, etcd inside")
	compressed, raw, err := Initramfs(initBin, []*Module{{Name: "virtio_blk", Data: []byte("ko")}})
	if err != nil {
		t.Fatal(err)
	}
	zr, _ := zstd.NewReader(nil)
	defer zr.Close()
	if plain, err := zr.DecodeAll(compressed, nil); err != nil || !bytes.Equal(plain, raw) {
		t.Fatalf("the compressed archive does not unpack to the raw one: %v", err)
	}
	files := map[string]cpio.Record{}
	rr := cpio.Newc.Reader(bytes.NewReader(raw))
	for {
		r, err := rr.ReadRecord()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[r.Name] = r
	}
	content := func(r cpio.Record) string {
		b := make([]byte, r.FileSize)
		if r.ReaderAt != nil {
			r.ReadAt(b, 0)
		}
		return string(b)
	}
	if r, ok := files[InitPath]; !ok || content(r) != string(initBin) {
		t.Errorf("/init is not the init binary")
	}
	for _, p := range Programs {
		r, ok := files["usr/bin/"+p]
		if !ok || content(r) != layout.NodeBinary {
			t.Errorf("usr/bin/%s does not link to %s", p, layout.NodeBinary)
		}
	}
	if _, ok := files[strings.TrimPrefix(layout.ESPMount, "/")]; !ok {
		t.Errorf("no %s to mount the ESP on", layout.ESPMount)
	}
	for name, r := range files {
		if strings.Contains(content(r), "the node binary") {
			t.Errorf("%s in the initramfs holds the node binary", name)
		}
	}

	b := fakeBoot()
	b.Node = node
	for _, m := range []Member{{Cluster: "c", ClusterID: "1a2b", Name: "etcd-1", Ignition: []byte("{}")}, {Cluster: "c", Name: "cloud", Platform: layout.PlatformAWS}} {
		esp, err := b.Files(m)
		if err != nil {
			t.Fatal(err)
		}
		bundle, err := b.Slot(m)
		if err != nil {
			t.Fatal(err)
		}
		var man slot.Manifest
		if err := json.Unmarshal(bundle.Manifest, &man); err != nil {
			t.Fatal(err)
		}
		at := layout.SlotsDir + "/" + man.ID + "/" + slot.FileNode
		if !bytes.Equal(esp[at], node) {
			t.Errorf("%s: the ESP has no node binary at %s", m.Name, at)
		}
	}
}

// TestOnlyStaticExecutablesGoIn: the appliance has no dynamic loader, so
// a dynamically linked node or init binary would boot to "no such file
// or directory"; it is refused when the image is built, as is a file
// that is no executable. Go's own gofmt is a static one.
func TestOnlyStaticExecutablesGoIn(t *testing.T) {
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Skipf("%s: %v", p, err)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string // "" accepted
	}{
		{"static Go program", read(filepath.Join(runtime.GOROOT(), "bin", "gofmt")), ""},
		{"dynamically linked program", read("/bin/true"), "is dynamically linked (it needs /lib64/ld-linux-x86-64.so.2"},
		{"shell script", []byte("#!/bin/sh\nexec etcd\n"), "is not an ELF executable"},
		{"empty file", nil, "is not an ELF executable"},
	} {
		err := checkStatic("node binary x", tc.data)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}
