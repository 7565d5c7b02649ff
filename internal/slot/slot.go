// Package slot is what the image builder, the node and the host agree on
// about boot slots: a slot's manifest and its signature, the names of
// its boot entries, the update bundle that carries a slot over the node
// API, and the state the node reports.
//
// A slot is everything a boot needs from the ESP: the UKI (under
// layout.EntryDir), the node binary, the member's config and the key
// that signs the updates the slot accepts (under layout.SlotsDir/ID).
// The manifest lists each file's size and SHA-256 and is signed with the
// image-signing key, which stays on the build machine; the node checks
// an update against the public key of the slot it runs.
package slot

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"etcdimg/internal/layout"
)

// The files of a slot, as the manifest and the bundle name them. The UKI
// is installed as a boot entry, the others in the slot's directory.
const (
	FileUKI        = "uki.efi"
	FileNode       = "etcdnode"
	FileConfig     = "node.ign"
	FileSigningKey = layout.SlotSigningKey
)

// Files lists every file a slot may hold, in the order a bundle carries
// them; FileConfig is absent from a generic cloud image's slot.
var Files = []string{FileSigningKey, FileConfig, FileNode, FileUKI}

// Format is the manifest's format version.
const Format = 1

// MaxFileSize bounds each file of a slot; MaxTries, the boot tries a new
// slot gets (its entry's name holds one digit).
const (
	MaxFileSize = 1 << 30
	MaxTries    = 9
)

// Manifest describes one slot.
type Manifest struct {
	Format int    `json:"format"`
	ID     string `json:"id"`
	// Cluster and Member are the member's recorded cluster ID and name;
	// both are empty in a generic cloud image.
	Cluster  string `json:"cluster,omitempty"`
	Member   string `json:"member,omitempty"`
	Platform string `json:"platform,omitempty"`
	Kernel   string `json:"kernel"`
	Etcd     string `json:"etcd,omitempty"`
	Files    []File `json:"files"`
}

// File is one file of a slot.
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// NewFile describes data as the file name.
func NewFile(name string, data []byte) File {
	sum := sha256.Sum256(data)
	return File{Name: name, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}
}

// File returns the manifest's entry for name.
func (m Manifest) File(name string) (File, bool) {
	i := slices.IndexFunc(m.Files, func(f File) bool { return f.Name == name })
	if i < 0 {
		return File{}, false
	}
	return m.Files[i], true
}

// Size is the sum of the slot's file sizes.
func (m Manifest) Size() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

var (
	idPattern  = regexp.MustCompile(`^[0-9a-f]{16}$`)
	sumPattern = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ValidID reports whether id is a slot ID: 16 lower-case hex digits.
func ValidID(id string) bool { return idPattern.MatchString(id) }

// Check refuses a manifest the node could not install as it is.
func (m Manifest) Check() error {
	if m.Format != Format {
		return fmt.Errorf("slot manifest: format %d, this etcdimg reads %d", m.Format, Format)
	}
	if !ValidID(m.ID) {
		return fmt.Errorf("slot manifest: id %q is not 16 hex digits", m.ID)
	}
	seen := map[string]bool{}
	for _, f := range m.Files {
		if !slices.Contains(Files, f.Name) {
			return fmt.Errorf("slot manifest: unknown file %q", f.Name)
		}
		if seen[f.Name] {
			return fmt.Errorf("slot manifest: file %q listed twice", f.Name)
		}
		seen[f.Name] = true
		if f.Size <= 0 || f.Size > MaxFileSize || !sumPattern.MatchString(f.SHA256) {
			return fmt.Errorf("slot manifest: file %q: size %d, sha256 %q", f.Name, f.Size, f.SHA256)
		}
	}
	for _, need := range []string{FileUKI, FileNode, FileSigningKey} {
		if !seen[need] {
			return fmt.Errorf("slot manifest: no %s", need)
		}
	}
	if (m.Cluster == "") != (m.Member == "") {
		return fmt.Errorf("slot manifest: cluster %q and member %q: both or neither", m.Cluster, m.Member)
	}
	return nil
}

// ID derives a slot's ID from what it boots: the same parts give the
// same ID, so a member asked to install the slot it runs knows it.
func ID(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		binary.Write(h, binary.BigEndian, uint64(len(p)))
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Sign encodes m and signs the encoding with key.
func Sign(m Manifest, key ed25519.PrivateKey) (manifest, sig []byte, err error) {
	if err := m.Check(); err != nil {
		return nil, nil, err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, nil, fmt.Errorf("slot manifest: %w", err)
	}
	b = append(b, '\n')
	return b, ed25519.Sign(key, b), nil
}

// Verify checks sig over the encoded manifest with pub and decodes it.
// Nothing in a manifest is believed before its signature is.
func Verify(manifest, sig []byte, pub ed25519.PublicKey) (Manifest, error) {
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, manifest, sig) {
		return Manifest{}, fmt.Errorf("slot manifest: the signature is not this member's image-signing key's: the update was not built from this cluster's output directory, or it was changed on the way")
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(manifest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("slot manifest: %w", err)
	}
	return m, m.Check()
}

// Digest is a slot's digest, as a member reports the slot it runs: the
// SHA-256 of its signed manifest, which names every file's.
func Digest(manifest []byte) string {
	sum := sha256.Sum256(manifest)
	return hex.EncodeToString(sum[:])
}

// ParsePublicKey reads a PEM "PUBLIC KEY" holding an Ed25519 key.
func ParsePublicKey(pemBytes []byte) (ed25519.PublicKey, error) {
	b, _ := pem.Decode(pemBytes)
	if b == nil || b.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("image-signing key: not a PEM public key")
	}
	k, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("image-signing key: %w", err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("image-signing key: %T, want Ed25519", k)
	}
	return pub, nil
}

// Entry is a slot's boot entry, a UKI in layout.EntryDir named
// etcdimg-GEN-ID.efi, or etcdimg-GEN-ID+LEFT[-DONE].efi while it is on
// trial (systemd-boot's boot counting: it takes a try, renaming the
// file, before it boots the entry; an entry with none left sorts last).
type Entry struct {
	Gen int
	ID  string
	// Counting is whether the name carries tries: the slot has not been
	// marked good.
	Counting             bool
	TriesLeft, TriesDone int
}

var entryPattern = regexp.MustCompile(`^etcdimg-([1-9][0-9]{0,8})-([0-9a-f]{16})(?:\+([0-9])(?:-([0-9]{1,3}))?)?\.efi$`)

// ParseEntry reads a boot entry's file name; ok is false for any other
// name.
func ParseEntry(name string) (e Entry, ok bool) {
	m := entryPattern.FindStringSubmatch(strings.ToLower(name))
	if m == nil {
		return Entry{}, false
	}
	e.Gen, _ = strconv.Atoi(m[1])
	e.ID = m[2]
	if m[3] != "" {
		e.Counting = true
		e.TriesLeft, _ = strconv.Atoi(m[3])
		if m[4] != "" {
			e.TriesDone, _ = strconv.Atoi(m[4])
		}
	}
	return e, true
}

// Name is the entry's file name.
func (e Entry) Name() string {
	s := fmt.Sprintf("etcdimg-%d-%s", e.Gen, e.ID)
	if e.Counting {
		s += "+" + strconv.Itoa(e.TriesLeft)
		if e.TriesDone > 0 {
			s += "-" + strconv.Itoa(e.TriesDone)
		}
	}
	return s + ".efi"
}

// Spent reports whether systemd-boot has no try left for the entry: it
// sorts after every other and boots only when nothing else is left.
func (e Entry) Spent() bool { return e.Counting && e.TriesLeft == 0 }

// LoaderConf is systemd-boot's configuration: no menu (a key pressed
// within 100 ms still opens it), the first etcdimg entry in its order,
// no editor and no entries of its own, and no random-seed file written
// on the ESP at every boot (the kernel seeds itself from virtio-rng or
// RDRAND; the appliance keeps no state on the ESP but its slots).
const LoaderConf = "timeout 0\ndefault etcdimg-*\neditor no\nauto-entries no\nauto-firmware no\nrandom-seed-mode off\n"
