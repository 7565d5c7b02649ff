// Package slots keeps the member's boot slots on its ESP: it reads which
// slot runs and how the others stand, installs an update into the
// inactive slot, marks a slot on trial good, and records why a trial
// failed. The ESP is mounted read-only and made writable only for the
// moment a change is written (ESP.Writable).
//
// Every change is ordered so that a power cut at any point leaves a disk
// that boots one of its slots: a slot's directory is complete before its
// boot entry exists, its entry is renamed into place last, and the entry
// of a slot being removed goes before its directory.
package slots

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"etcdimg/internal/layout"
	"etcdimg/internal/slot"
)

// ESP is the ESP mounted at Root, and the slot the member booted.
type ESP struct {
	Root    string
	Running string // the running slot's ID (layout.SlotArg)
	// Writable runs fn with the ESP writable (nil: it always is).
	Writable func(fn func() error) error
}

// ErrRunning is returned by Install for the slot that runs.
var ErrRunning = errors.New("the member runs this slot already")

func (e ESP) entryDir() string         { return filepath.Join(e.Root, layout.EntryDir) }
func (e ESP) slotDir(id string) string { return filepath.Join(e.Root, layout.SlotsDir, id) }

func (e ESP) write(fn func() error) error {
	if e.Writable == nil {
		return fn()
	}
	return e.Writable(fn)
}

// Entries lists the boot entries, highest generation first.
func (e ESP) Entries() ([]slot.Entry, error) {
	des, err := os.ReadDir(e.entryDir())
	if err != nil {
		return nil, fmt.Errorf("slots: %w", err)
	}
	var out []slot.Entry
	for _, de := range des {
		if en, ok := slot.ParseEntry(de.Name()); ok && de.Type().IsRegular() {
			out = append(out, en)
		}
	}
	slices.SortFunc(out, func(a, b slot.Entry) int { return b.Gen - a.Gen })
	return out, nil
}

// running is the running slot's entry.
//
// A power cut in the middle of a FAT rename (MarkGood) can leave the
// entry under both names, sharing its clusters: the good name is the
// one that counts (systemd-boot boots it first, the spent one last), and
// neither is removed, which would free clusters the other still uses.
func (e ESP) running(entries []slot.Entry) (slot.Entry, error) {
	found, ok := slot.Entry{}, false
	for _, en := range entries {
		if en.ID == e.Running && (!ok || found.Counting && !en.Counting) {
			found, ok = en, true
		}
	}
	if !ok {
		return slot.Entry{}, fmt.Errorf("slots: the running slot %s has no boot entry in %s", e.Running, layout.EntryDir)
	}
	return found, nil
}

// RunningEntry is the running slot's boot entry (its good name, when a
// power cut left it under two).
func (e ESP) RunningEntry() (slot.Entry, error) {
	entries, err := e.Entries()
	if err != nil {
		return slot.Entry{}, err
	}
	return e.running(entries)
}

// Status reads the slots' state.
func (e ESP) Status() (slot.Status, error) {
	entries, err := e.Entries()
	if err != nil {
		return slot.Status{}, err
	}
	run, err := e.running(entries)
	if err != nil {
		return slot.Status{}, err
	}
	st := slot.Status{Running: e.state(run, run)}
	for _, en := range entries {
		if en.ID == run.ID {
			continue // the running slot, and a duplicate of its entry
		}
		s := e.state(en, run)
		if st.Other == nil {
			st.Other = &s
		}
		if s.State == slot.StateBad && en.Gen > run.Gen && st.RolledBack == nil {
			st.RolledBack = &s
		}
	}
	if m := st.Running.Manifest; m != nil {
		st.Member = m.Member
	}
	return st, nil
}

func (e ESP) state(en, run slot.Entry) slot.SlotState {
	s := slot.SlotState{ID: en.ID, Gen: en.Gen, TriesLeft: en.TriesLeft, TriesDone: en.TriesDone}
	switch {
	case !en.Counting:
		s.State = slot.StateGood
	case en.ID == run.ID:
		// systemd-boot takes a try before it boots: the last try runs
		// as NAME+0-N.efi, and is a trial all the same.
		s.State = slot.StateTrial
	case en.Spent():
		s.State = slot.StateBad
	case en.TriesDone > 0:
		s.State = slot.StateTrial
	default:
		s.State = slot.StateStaged
	}
	dir := e.slotDir(en.ID)
	if raw, err := os.ReadFile(filepath.Join(dir, layout.SlotManifestFile)); err == nil {
		var m slot.Manifest
		if m, err = decode(raw); err == nil {
			s.Manifest, s.Digest = &m, slot.Digest(raw)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, layout.SlotTrialFile)); err == nil {
		s.Trial = strings.TrimSpace(string(b))
	}
	return s
}

// TrustedKey is the image-signing public key the running slot carries.
func (e ESP) TrustedKey() (ed25519.PublicKey, error) {
	b, err := os.ReadFile(filepath.Join(e.slotDir(e.Running), layout.SlotSigningKey))
	if err != nil {
		return nil, fmt.Errorf("slots: the running slot's image-signing key: %w", err)
	}
	return slot.ParsePublicKey(b)
}

// Want is what an update must be for: this member of this cluster.
type Want struct{ Cluster, Member string }

// Install reads a bundle from r, checks its signature against the
// running slot's key and its manifest against want, and installs it as
// the inactive slot with tries boot tries, replacing the slot that does
// not run. Nothing of the running slot is touched, and nothing is
// written before the signature and the manifest are checked. limit
// bounds the slot's size.
func (e ESP) Install(r io.Reader, want Want, tries int, limit int64) (slot.Manifest, error) {
	if tries < 1 || tries > slot.MaxTries {
		return slot.Manifest{}, fmt.Errorf("slots: %d boot tries; a slot takes 1 to %d", tries, slot.MaxTries)
	}
	pub, err := e.TrustedKey()
	if err != nil {
		return slot.Manifest{}, err
	}
	br, err := slot.OpenBundle(r, pub)
	if err != nil {
		return slot.Manifest{}, err
	}
	br.Reuse = func(f slot.File) io.ReadCloser { return e.reuse(f, br.Manifest.ID) }
	m := br.Manifest
	switch {
	case m.Cluster != want.Cluster:
		return m, fmt.Errorf("slots: the update is for cluster %q, this member's is %q: it was built from another cluster's output directory", m.Cluster, want.Cluster)
	case m.Member != want.Member:
		return m, fmt.Errorf("slots: the update is %q's, this member is %q", m.Member, want.Member)
	case m.ID == e.Running:
		return m, ErrRunning
	case m.Size() > limit:
		return m, fmt.Errorf("slots: the update is %d bytes, more than the %d a slot may hold", m.Size(), limit)
	}
	// The platform decides where the config comes from and how the
	// network comes up: a slot built for another one would not come up
	// here.
	if raw, err := os.ReadFile(filepath.Join(e.slotDir(e.Running), layout.SlotManifestFile)); err == nil {
		if cur, err := decode(raw); err == nil && cur.Platform != m.Platform {
			return m, fmt.Errorf("slots: the update is built for platform %q, this member runs %q: build the images with --platform %s", m.Platform, cur.Platform, cur.Platform)
		}
	}
	entries, err := e.Entries()
	if err != nil {
		return m, err
	}
	run, err := e.running(entries)
	if err != nil {
		return m, err
	}
	if run.Counting {
		return m, fmt.Errorf("slots: the running slot %s is on trial: an update waits until it is marked good (or has rolled back), so that a good slot stays to fall back on", run.ID)
	}
	err = e.write(func() error {
		if err := e.clear(entries); err != nil {
			return err
		}
		var st unix.Statfs_t
		if err := unix.Statfs(e.Root, &st); err == nil {
			if free := int64(st.Bavail) * st.Bsize; free < m.Size()+1<<20 {
				return fmt.Errorf("slots: the ESP has %d bytes free, the update needs %d", free, m.Size())
			}
		}
		return e.install(br, run.Gen+1, tries)
	})
	return m, err
}

// reuse opens the running slot's copy of f, when its manifest lists a
// file of that name and digest: what the host left out of an update. The
// UKI of a slot that differs from the running one only in its config is
// derived from the running UKI (slot.DeriveUKI) when the sizes match.
// The caller checks the copy against f's digest as it is read.
func (e ESP) reuse(f slot.File, id string) io.ReadCloser {
	raw, err := os.ReadFile(filepath.Join(e.slotDir(e.Running), layout.SlotManifestFile))
	if err != nil {
		return nil
	}
	cur, err := decode(raw)
	if err != nil {
		return nil
	}
	have, ok := cur.File(f.Name)
	if !ok || have.Size != f.Size {
		return nil
	}
	path := filepath.Join(e.slotDir(e.Running), f.Name)
	if f.Name == slot.FileUKI {
		run, err := e.RunningEntry()
		if err != nil {
			return nil
		}
		path = filepath.Join(e.entryDir(), run.Name())
		if have.SHA256 != f.SHA256 {
			// One copy of the signed size, patched in place: the node
			// has 256 MiB, and PID 1 holds this.
			src, err := os.Open(path)
			if err != nil {
				return nil
			}
			defer src.Close()
			if fi, err := src.Stat(); err != nil || fi.Size() != f.Size {
				return nil
			}
			b := make([]byte, f.Size)
			if _, err := io.ReadFull(src, b); err != nil || !slot.DeriveUKIInPlace(b, e.Running, id) {
				return nil
			}
			return io.NopCloser(bytes.NewReader(b))
		}
	}
	if have.SHA256 != f.SHA256 {
		return nil
	}
	src, err := os.Open(path)
	if err != nil {
		return nil
	}
	return src
}

// clear removes every slot but the running one, and what an interrupted
// install left: each entry first, so that nothing half-removed boots.
func (e ESP) clear(entries []slot.Entry) error {
	for _, en := range entries {
		if en.ID != e.Running {
			if err := os.Remove(filepath.Join(e.entryDir(), en.Name())); err != nil {
				return fmt.Errorf("slots: remove the inactive entry: %w", err)
			}
		}
	}
	if err := syncDir(e.entryDir()); err != nil {
		return err
	}
	des, err := os.ReadDir(e.entryDir())
	if err != nil {
		return fmt.Errorf("slots: %w", err)
	}
	// What an interrupted install left goes too, except a leftover of the
	// running slot itself: a power cut in the rename that committed it
	// may have left the temporary name beside the final one, sharing its
	// clusters, and removing it would free the running slot's.
	for _, de := range des {
		if strings.HasSuffix(de.Name(), ".tmp") && !strings.Contains(de.Name(), "-"+e.Running) {
			os.Remove(filepath.Join(e.entryDir(), de.Name()))
		}
	}
	dirs, err := os.ReadDir(filepath.Join(e.Root, layout.SlotsDir))
	if err != nil {
		return fmt.Errorf("slots: %w", err)
	}
	for _, de := range dirs {
		if de.Name() != e.Running && de.Name() != e.Running+".tmp" {
			if err := os.RemoveAll(filepath.Join(e.Root, layout.SlotsDir, de.Name())); err != nil {
				return fmt.Errorf("slots: remove the inactive slot: %w", err)
			}
		}
	}
	return syncDir(filepath.Join(e.Root, layout.SlotsDir))
}

func (e ESP) install(br *slot.Reader, gen, tries int) error {
	m := br.Manifest
	tmpDir := e.slotDir(m.ID) + ".tmp"
	entry := slot.Entry{Gen: gen, ID: m.ID, Counting: true, TriesLeft: tries}
	tmpUKI := filepath.Join(e.entryDir(), entry.Name()+".tmp")
	if err := os.Mkdir(tmpDir, 0o700); err != nil {
		return fmt.Errorf("slots: %w", err)
	}
	err := br.Each(func(f slot.File, data io.Reader) error {
		path := filepath.Join(tmpDir, f.Name)
		if f.Name == slot.FileUKI {
			path = tmpUKI
		}
		return writeSynced(path, data)
	})
	if err == nil {
		err = writeSynced(filepath.Join(tmpDir, layout.SlotManifestFile), strings.NewReader(string(br.Raw)))
	}
	if err == nil {
		// A slot whose key cannot be read would take no update ever
		// after it is marked good.
		var pub []byte
		if pub, err = os.ReadFile(filepath.Join(tmpDir, slot.FileSigningKey)); err == nil {
			_, err = slot.ParsePublicKey(pub)
		}
	}
	if err == nil {
		err = syncDir(tmpDir)
	}
	if err == nil {
		err = os.Rename(tmpDir, e.slotDir(m.ID))
	}
	if err == nil {
		err = syncDir(filepath.Join(e.Root, layout.SlotsDir))
	}
	if err == nil {
		// The commit: from here systemd-boot boots the new slot first.
		err = os.Rename(tmpUKI, filepath.Join(e.entryDir(), entry.Name()))
	}
	if err == nil {
		err = syncDir(e.entryDir())
	}
	if err != nil {
		// The entry first: nothing half-written may boot.
		os.Remove(filepath.Join(e.entryDir(), entry.Name()))
		os.Remove(tmpUKI)
		os.RemoveAll(tmpDir)
		os.RemoveAll(e.slotDir(m.ID))
		return fmt.Errorf("slots: install %s: %w", m.ID, err)
	}
	return nil
}

// MarkGood ends the running slot's trial: its entry loses its tries, and
// systemd-boot boots it from now on. It reports whether anything changed.
func (e ESP) MarkGood() (bool, error) {
	entries, err := e.Entries()
	if err != nil {
		return false, err
	}
	run, err := e.running(entries)
	if err != nil || !run.Counting {
		return false, err
	}
	good := slot.Entry{Gen: run.Gen, ID: run.ID}
	err = e.write(func() error {
		if err := os.Rename(filepath.Join(e.entryDir(), run.Name()), filepath.Join(e.entryDir(), good.Name())); err != nil {
			return fmt.Errorf("slots: mark %s good: %w", run.ID, err)
		}
		os.Remove(filepath.Join(e.slotDir(run.ID), layout.SlotTrialFile))
		return syncDir(e.entryDir())
	})
	return err == nil, err
}

// RecordTrial writes why the running slot's trial boot failed, for the
// slot that boots next to report.
func (e ESP) RecordTrial(reason string) error {
	return e.write(func() error {
		return writeSynced(filepath.Join(e.slotDir(e.Running), layout.SlotTrialFile), strings.NewReader(reason+"\n"))
	})
}

func decode(raw []byte) (slot.Manifest, error) {
	var m slot.Manifest
	err := json.Unmarshal(raw, &m)
	return m, err
}

func writeSynced(path string, r io.Reader) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("slots: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("slots: sync %s: %w", dir, err)
	}
	return nil
}
