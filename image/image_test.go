package image

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"etcdimg/image/deb"
	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/slot"
	"etcdimg/pki"
)

// fakeBoot is enough for the disk writer: the real EFI stub (the UKI is
// a PE file), and kernel and initramfs bytes it does not look into.
func fakeBoot() *Boot {
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)) // builds are compared byte for byte
	return &Boot{Stub: realStub(), Loader: []byte("MZ systemd-boot"), Node: []byte("the node binary"), Kernel: make([]byte, 3<<20), Initrd: make([]byte, 2<<20), KernelVersion: "6.1.0-test",
		Signer: key, SignerPub: pemPublic(key)}
}

func pemPublic(key ed25519.PrivateKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// testDir is an output directory as render leaves it for a build: the
// image-signing key and the cluster's record.
func testDir(t *testing.T) outdir.Layout {
	t.Helper()
	dir := outdir.Layout(filepath.Join(t.TempDir(), "out"))
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir.PKI(), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		dir.PKIFile(pki.ImageSigningKey): pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		dir.PKIFile(pki.ImageSigningPub): pemPublic(key),
		dir.ClusterRecord():              []byte(`{"clusterID":"1a2b","token":"t","initialCluster":"","source":"spec"}`),
	} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// realStub is systemd's EFI stub from the package `make deps` downloaded
// ($ETCDIMG_DEB_CACHE, else the module's .cache/deb).
var realStub = sync.OnceValue(func() []byte {
	cache := os.Getenv(deb.CacheEnv)
	if cache == "" {
		cache = filepath.Join("..", ".cache", "deb")
	}
	p, err := deb.FindVerified(cache, deb.Bootloader)
	if err == nil {
		var stub []byte
		if stub, err = ReadStub(p); err == nil {
			return stub
		}
	}
	panic(fmt.Sprintf("the EFI stub: %v (run `make deps`)", err))
})

// writeMember writes member etcd-1's raw image with config cfg.
func writeMember(dir string, cfg []byte, restore string) ([]Built, error) {
	raw, _ := FormatNamed("raw")
	return WriteAll(dir, []Member{{Cluster: "c", ClusterID: "1a2b", Name: "etcd-1", Ignition: cfg, Restore: restore}}, fakeBoot(), []Format{raw}, FormatOptions{})
}

// TestImagesArePrivateFromTheFirstByte: an image holds the member's key,
// so even with a permissive umask its temporary file is never readable by
// others, the images directory is made 0700 even when it existed with
// 0755, and the finished image is 0600.
func TestImagesArePrivateFromTheFirstByte(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "images")
	os.Mkdir(dir, 0o755)

	var worst atomic.Uint32
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if strings.Contains(e.Name(), ".tmp-") {
					if info, err := e.Info(); err == nil {
						worst.Store(max(worst.Load(), uint32(info.Mode().Perm())))
					}
				}
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	built, err := writeMember(dir, []byte("{}"), "")
	close(stop)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	if w := worst.Load(); w == 0 {
		t.Log("the temporary file was never seen (write too fast); its mode was not observed")
	} else if w&0o077 != 0 {
		t.Errorf("temporary image was mode %o while written", w)
	}
	st, _ := os.Stat(dir)
	if st.Mode().Perm() != 0o700 {
		t.Errorf("images directory is %o, want 700", st.Mode().Perm())
	}
	img, _ := os.Stat(built[0].Path)
	if img.Mode().Perm() != 0o600 {
		t.Errorf("image is %o, want 600", img.Mode().Perm())
	}
}

// TestRebuildKeepsThePreviousImage: rebuilding with the same inputs keeps
// one image (same bytes); with other inputs the old image is moved to
// previous/, never deleted.
func TestRebuildKeepsThePreviousImage(t *testing.T) {
	dir := t.TempDir()
	cfg := []byte(`{"a":1}`)
	first, err := writeMember(dir, cfg, "")
	if err != nil || !first[0].New || first[0].Previous != "" {
		t.Fatalf("first build: %+v %v", first, err)
	}
	same, err := writeMember(dir, cfg, "")
	if err != nil || same[0].New || same[0].Previous != "" {
		t.Fatalf("same inputs: %+v %v", same, err)
	}
	if prev, _ := os.ReadDir(filepath.Join(dir, "previous")); len(prev) != 0 {
		t.Errorf("an identical image was kept aside: %v", prev)
	}
	oldBytes, _ := os.ReadFile(first[0].Path)
	cfg = []byte(`{"a":2}`)
	changed, err := writeMember(dir, cfg, "")
	if err != nil || !changed[0].New || changed[0].Previous == "" {
		t.Fatalf("new inputs: %+v %v", changed, err)
	}
	kept, err := os.ReadFile(changed[0].Previous)
	if err != nil || string(kept) != string(oldBytes) {
		t.Errorf("the previous image was not kept whole at %s: %v", changed[0].Previous, err)
	}
}

// TestRestorePartitionCarriesTheSnapshot: an image made with a snapshot
// has a second GPT partition, named etcd-restore, after the ESP, whose
// first bytes are the snapshot's, as sfdisk reads the table; the ESP
// still passes fsck.vfat.
func TestRestorePartitionCarriesTheSnapshot(t *testing.T) {
	for _, tool := range []string{"sfdisk", "fsck.vfat"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run `make deps`", tool)
		}
	}
	dir := t.TempDir()
	snap := filepath.Join(dir, "snap.db")
	data := make([]byte, 3<<20+12345)
	for i := range data {
		data[i] = byte(i * 7)
	}
	os.WriteFile(snap, data, 0o600)
	built, err := writeMember(filepath.Join(dir, "images"), []byte("{}"), snap)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sfdisk", "--json", built[0].Path).Output()
	if err != nil {
		t.Fatal(err)
	}
	var table struct {
		PartitionTable struct {
			SectorSize int64 `json:"sectorsize"`
			Partitions []struct {
				Start, Size int64
				Name        string
			}
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &table); err != nil {
		t.Fatal(err)
	}
	parts := table.PartitionTable.Partitions
	if len(parts) != 2 || parts[1].Name != layout.RestoreLabel || parts[1].Start != parts[0].Start+parts[0].Size {
		t.Fatalf("partitions: %s", out)
	}
	if got := parts[1].Size * 512; got < int64(len(data)) {
		t.Fatalf("restore partition holds %d bytes, snapshot is %d", got, len(data))
	}
	img, _ := os.ReadFile(built[0].Path)
	off := parts[1].Start * 512
	if !bytes.Equal(img[off:off+int64(len(data))], data) {
		t.Error("the restore partition does not start with the snapshot's bytes")
	}
	espOff, espLen := parts[0].Start*512, parts[0].Size*512
	esp := filepath.Join(dir, "esp.img")
	os.WriteFile(esp, img[espOff:espOff+espLen], 0o600)
	if out, err := exec.Command("fsck.vfat", "-n", esp).CombinedOutput(); err != nil {
		t.Errorf("fsck.vfat: %v\n%s", err, out)
	}
}

// TestAGenericImageNeverCarriesASnapshot: a cloud image is one image for
// every instance, uploaded as a shared machine image; after a restore the
// old code put the whole snapshot (every key of the cluster) into it.
func TestAGenericImageNeverCarriesASnapshot(t *testing.T) {
	dir := t.TempDir()
	snap := filepath.Join(dir, "snap.db")
	os.WriteFile(snap, []byte("planted-secret-value"), 0o600)
	raw, _ := FormatNamed("raw")
	_, err := WriteAll(filepath.Join(dir, "images"), []Member{{Cluster: "c", Name: "etcdimg-aws", Restore: snap, Platform: layout.PlatformAWS}}, fakeBoot(), []Format{raw}, FormatOptions{})
	if err == nil || !strings.Contains(err.Error(), "never carries a snapshot") {
		t.Fatalf("a generic image with a snapshot: %v", err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "images", "*"))
	for _, f := range files {
		if b, _ := os.ReadFile(f); bytes.Contains(b, []byte("planted-secret-value")) {
			t.Errorf("%s holds the snapshot", f)
		}
	}
}

// TestAConfigChangeKeepsTheUKIDerivable: the slots the builder makes for
// two configs of one member differ in their UKIs only in the slot ID on
// the command line, so an upgrade that rotates certificates sends no UKI
// (slot.Reusable); a new kernel's UKI is sent.
func TestAConfigChangeKeepsTheUKIDerivable(t *testing.T) {
	b := fakeBoot()
	m := Member{Cluster: "c", ClusterID: "1a2b", Name: "etcd-1", Ignition: []byte(`{"a":1}`)}
	manifest := func(bundle slot.Bundle) slot.Manifest {
		var man slot.Manifest
		if err := json.Unmarshal(bundle.Manifest, &man); err != nil {
			t.Fatal(err)
		}
		return man
	}
	first, err := b.Slot(m)
	if err != nil {
		t.Fatal(err)
	}
	m.Ignition = []byte(`{"a":2}`)
	second, err := b.Slot(m)
	if err != nil {
		t.Fatal(err)
	}
	have, err := slot.Reusable(manifest(first), second)
	if err != nil {
		t.Fatal(err)
	}
	if uki, _ := manifest(second).File(slot.FileUKI); have[slot.FileUKI] != uki.SHA256 {
		t.Error("a config change makes a UKI the member cannot derive from its own")
	}
	b.Kernel = append(bytes.Clone(b.Kernel), 1)
	third, err := b.Slot(m)
	if err != nil {
		t.Fatal(err)
	}
	have, err = slot.Reusable(manifest(first), third)
	if uki, _ := manifest(third).File(slot.FileUKI); err != nil || have[slot.FileUKI] == uki.SHA256 {
		t.Errorf("a new kernel's UKI counts as derivable (%v)", err)
	}
}
