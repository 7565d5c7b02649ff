package slot

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
)

// The bundle is a tar stream: the signed manifest, its signature, then
// the slot's files in Files' order. The node reads the manifest and its
// signature first and believes nothing after them that they do not name.
const (
	bundleManifest  = "slot.json"
	bundleSignature = "slot.sig"
	// maxManifest bounds what the node reads before the signature checks.
	maxManifest = 64 << 10
)

// Bundle is a slot as the host sends it.
type Bundle struct {
	Manifest, Signature []byte
	Files               map[string][]byte
}

// WriteTo writes b as a tar stream.
func (b Bundle) WriteTo(w io.Writer) (int64, error) { return b.WriteLeavingOut(w, nil) }

// WriteLeavingOut writes b as a tar stream without the files whose
// SHA-256 is have's for their name: what the member can produce from the
// slot it runs (Reusable), which it takes from there.
func (b Bundle) WriteLeavingOut(w io.Writer, have map[string]string) (int64, error) {
	var m Manifest
	if len(have) > 0 {
		if err := json.Unmarshal(b.Manifest, &m); err != nil {
			return 0, fmt.Errorf("slot bundle: %w", err)
		}
	}
	cw := &countWriter{w: w}
	tw := tar.NewWriter(cw)
	put := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(data)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := put(bundleManifest, b.Manifest); err != nil {
		return cw.n, fmt.Errorf("slot bundle: %w", err)
	}
	if err := put(bundleSignature, b.Signature); err != nil {
		return cw.n, fmt.Errorf("slot bundle: %w", err)
	}
	for _, name := range Files {
		if f, ok := m.File(name); ok && have[name] == f.SHA256 {
			continue
		}
		if data, ok := b.Files[name]; ok {
			if err := put(name, data); err != nil {
				return cw.n, fmt.Errorf("slot bundle: %s: %w", name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return cw.n, fmt.Errorf("slot bundle: %w", err)
	}
	return cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ErrLeftOut ends the node's refusal of an update that left out a file
// it cannot take from its running slot: the host sends the whole update
// then.
const ErrLeftOut = "send the whole update"

// Reader reads a bundle on the node.
type Reader struct {
	tr *tar.Reader
	// Manifest is the verified manifest, and Raw its encoding.
	Manifest Manifest
	Raw      []byte
	// Reuse, when set, opens the member's own copy of a file the bundle
	// left out (WriteTo's have), or returns nil when it has none.
	Reuse func(f File) io.ReadCloser
	seen  map[string]bool
}

// OpenBundle reads a bundle's manifest and signature from r and checks
// the signature with pub before it decodes anything else.
func OpenBundle(r io.Reader, pub ed25519.PublicKey) (*Reader, error) {
	tr := tar.NewReader(r)
	manifest, err := readSmall(tr, bundleManifest)
	if err != nil {
		return nil, err
	}
	sig, err := readSmall(tr, bundleSignature)
	if err != nil {
		return nil, err
	}
	m, err := Verify(manifest, sig, pub)
	if err != nil {
		return nil, err
	}
	return &Reader{tr: tr, Manifest: m, Raw: manifest, seen: map[string]bool{}}, nil
}

func readSmall(tr *tar.Reader, want string) ([]byte, error) {
	h, err := tr.Next()
	if err != nil {
		return nil, fmt.Errorf("slot bundle: reading %s: %w", want, err)
	}
	if h.Name != want || h.Typeflag != tar.TypeReg || h.Size > maxManifest {
		return nil, fmt.Errorf("slot bundle: %q (%d bytes) where %s belongs: not an etcdimg update", h.Name, h.Size, want)
	}
	return io.ReadAll(tr)
}

// Each calls write for each file of the bundle with a reader of exactly
// the manifest's size; the file's SHA-256 is checked after write
// returns, and a file the manifest does not name, a size that differs,
// a file twice, a digest that differs or a missing file is an error.
// Whatever write kept of a file that failed its check is the caller's to
// throw away.
func (r *Reader) Each(write func(f File, data io.Reader) error) error {
	for {
		h, err := r.tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("slot bundle: %w", err)
		}
		f, ok := r.Manifest.File(h.Name)
		if !ok || h.Typeflag != tar.TypeReg || r.seen[h.Name] {
			return fmt.Errorf("slot bundle: %q is not a file the manifest names once", h.Name)
		}
		if h.Size != f.Size {
			return fmt.Errorf("slot bundle: %s is %d bytes, the manifest says %d", h.Name, h.Size, f.Size)
		}
		r.seen[h.Name] = true
		sum := sha256.New()
		if err := write(f, io.TeeReader(io.LimitReader(r.tr, f.Size), sum)); err != nil {
			return fmt.Errorf("slot bundle: %s: %w", h.Name, err)
		}
		if got := hex.EncodeToString(sum.Sum(nil)); got != f.SHA256 {
			return fmt.Errorf("slot bundle: %s has SHA-256 %s, the signed manifest says %s: the update was changed on the way", h.Name, got, f.SHA256)
		}
	}
	for _, f := range r.Manifest.Files {
		if r.seen[f.Name] {
			continue
		}
		// A file the host left out because the member holds it already:
		// taken from the running slot, and checked like any other.
		var src io.ReadCloser
		if r.Reuse != nil {
			src = r.Reuse(f)
		}
		if src == nil {
			return fmt.Errorf("slot bundle: %s is missing: the update was cut short, or left it out for a copy this member does not hold (%s)", f.Name, ErrLeftOut)
		}
		sum := sha256.New()
		err := write(f, io.TeeReader(io.LimitReader(src, f.Size), sum))
		src.Close()
		if err != nil {
			return fmt.Errorf("slot bundle: %s (kept from the running slot): %w", f.Name, err)
		}
		if got := hex.EncodeToString(sum.Sum(nil)); got != f.SHA256 {
			return fmt.Errorf("slot bundle: the running slot's %s has SHA-256 %s, not the %s it was left out for (%s)", f.Name, got, f.SHA256, ErrLeftOut)
		}
	}
	return nil
}

// NewBundle signs a bundle for files.
func NewBundle(m Manifest, files map[string][]byte, key ed25519.PrivateKey) (Bundle, error) {
	m.Files = nil
	for _, name := range Files {
		if data, ok := files[name]; ok {
			m.Files = append(m.Files, NewFile(name, data))
		}
	}
	for name := range files {
		if !slices.Contains(Files, name) {
			return Bundle{}, fmt.Errorf("slot bundle: unknown file %q", name)
		}
	}
	manifest, sig, err := Sign(m, key)
	if err != nil {
		return Bundle{}, err
	}
	return Bundle{Manifest: manifest, Signature: sig, Files: files}, nil
}

// Bytes is the bundle as one byte slice.
func (b Bundle) Bytes() ([]byte, error) {
	var buf bytes.Buffer
	_, err := b.WriteTo(&buf)
	return buf.Bytes(), err
}
