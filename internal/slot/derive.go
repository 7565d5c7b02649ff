package slot

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"etcdimg/internal/layout"
)

// DeriveUKI returns uki with the slot its command line names
// (layout.SlotArg=from) changed to to, or nil when uki does not name
// from exactly once or the IDs are not slot IDs. Two slots that differ
// only in their config or signing key boot the same kernel, initramfs
// and command line but for the slot's ID: their UKIs differ in those 16
// bytes. A member derives the new slot's UKI from the one it runs, and
// checks it against the signed manifest like any file it was sent.
func DeriveUKI(uki []byte, from, to string) []byte {
	d := bytes.Clone(uki)
	if !DeriveUKIInPlace(d, from, to) {
		return nil
	}
	return d
}

// DeriveUKIInPlace is DeriveUKI on uki itself; it reports whether it
// changed it.
func DeriveUKIInPlace(uki []byte, from, to string) bool {
	if !ValidID(from) || !ValidID(to) {
		return false
	}
	old := []byte(layout.SlotArg + "=" + from)
	i := bytes.Index(uki, old)
	if i < 0 || bytes.Contains(uki[i+len(old):], old) {
		return false
	}
	copy(uki[i+len(layout.SlotArg)+1:], to)
	return true
}

// Reusable is what a member running the slot of running can produce of
// next's files without being sent them, as name → SHA-256 (the have of
// WriteLeavingOut): each file it holds with the same digest, and the
// UKI when next's derives from the running one (DeriveUKI).
func Reusable(running Manifest, next Bundle) (map[string]string, error) {
	have := map[string]string{}
	for _, f := range running.Files {
		have[f.Name] = f.SHA256
	}
	var nm Manifest
	if err := json.Unmarshal(next.Manifest, &nm); err != nil {
		return nil, fmt.Errorf("slot bundle: %w", err)
	}
	nf, ok := nm.File(FileUKI)
	rf, rok := running.File(FileUKI)
	if !ok || !rok || nf.SHA256 == rf.SHA256 || nf.Size != rf.Size {
		return have, nil
	}
	// The member derives running → next; the host holds next only, so it
	// derives next → running and checks that the way back is the same.
	if d := DeriveUKI(next.Files[FileUKI], nm.ID, running.ID); d != nil {
		if sum := sha256.Sum256(d); hex.EncodeToString(sum[:]) == rf.SHA256 && bytes.Equal(DeriveUKI(d, running.ID, nm.ID), next.Files[FileUKI]) {
			have[FileUKI] = nf.SHA256
		}
	}
	return have, nil
}
