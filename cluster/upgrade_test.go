package cluster

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"etcdimg/internal/etcdtest"
	"etcdimg/internal/layout"
	"etcdimg/internal/slot"
)

// testImage writes a raw disk laid out as image.build lays out a
// member's: a GPT, an ESP with one slot (its entry and its directory).
// It returns the image's path and the bundle upgrade reads from it.
func testImage(t *testing.T, id, tag string) (string, slot.Bundle) {
	t.Helper()
	return testImageOf(t, id, tag, "3.7.3")
}

// testImageOf is testImage with etcd etcd in the slot's manifest.
func testImageOf(t *testing.T, id, tag, etcd string) (string, slot.Bundle) {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	files := map[string][]byte{
		slot.FileUKI: []byte("MZ " + tag), slot.FileNode: []byte("ELF " + tag),
		slot.FileConfig: []byte(`{"ignition":{}}`), slot.FileSigningKey: []byte("-----BEGIN PUBLIC KEY-----\n"),
	}
	b, err := slot.NewBundle(slot.Manifest{Format: slot.Format, ID: id, Cluster: "c0ffee", Member: "etcd-1", Kernel: "6.1", Etcd: etcd}, files, key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "etcd-1.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const mib = 1 << 20
	espSize := int64(40 * mib)
	if err := f.Truncate(espSize + 2*mib); err != nil {
		t.Fatal(err)
	}
	d, err := diskfs.OpenBackend(file.New(f, false), diskfs.WithSectorSize(diskfs.SectorSize512))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Partition(&gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, Partitions: []*gpt.Partition{{
		Index: 1, Start: mib / 512, End: uint64((mib+espSize)/512 - 1), Type: gpt.EFISystemPartition, Name: layout.ESPLabel,
	}}}); err != nil {
		t.Fatal(err)
	}
	fs, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 1, FSType: filesystem.TypeFat32, VolumeLabel: "ETCDIMG"})
	if err != nil {
		t.Fatal(err)
	}
	dir := layout.SlotsDir + "/" + id
	put := map[string][]byte{
		layout.EntryDir + "/" + slot.Entry{Gen: 1, ID: id}.Name(): files[slot.FileUKI],
		dir + "/" + layout.SlotManifestFile:                       b.Manifest,
		dir + "/" + layout.SlotSignatureFile:                      b.Signature,
	}
	for n, data := range files {
		if n != slot.FileUKI {
			put[dir+"/"+n] = data
		}
	}
	for _, m := range []string{"/EFI", layout.EntryDir, layout.SlotsDir, dir} {
		if err := fs.Mkdir(m); err != nil {
			t.Fatal(err)
		}
	}
	for n, data := range put {
		w, err := fs.OpenFile(n, os.O_CREATE|os.O_RDWR)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		if _, err := io.Copy(w, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
	return p, b
}

// fakeNode is a member's node API whose status the test scripts: before
// is what it answers until it is rebooted, after (called with the
// number of status requests since the reboot) what it answers then.
type fakeNode struct {
	mu      sync.Mutex
	before  slot.Status
	after   func(n int) slot.Status
	put     [][]byte
	putCode int
	// leftOut answers the first update with the node's refusal of a
	// file it cannot take from its running slot.
	leftOut  bool
	reboots  int
	sinceReb int
}

func (f *fakeNode) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.Method == http.MethodGet && r.URL.Path == slot.APIStatus:
		st := f.before
		if f.reboots > 0 && f.after != nil {
			st = f.after(f.sinceReb)
			f.sinceReb++
		}
		json.NewEncoder(w).Encode(st)
	case r.Method == http.MethodPut && r.URL.Path == slot.APIUpdate:
		b, _ := io.ReadAll(r.Body)
		f.put = append(f.put, b)
		if f.leftOut && len(f.put) == 1 {
			http.Error(w, "slot bundle: etcdnode is missing ("+slot.ErrLeftOut+")", http.StatusUnprocessableEntity)
			return
		}
		if f.putCode != 0 {
			http.Error(w, "refused", f.putCode)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"slot": "x", "state": slot.StateStaged})
	case r.Method == http.MethodPost && r.URL.Path == slot.APIReboot:
		f.reboots++
		w.WriteHeader(http.StatusAccepted)
	default:
		http.NotFound(w, r)
	}
}

func newUpgrader(t *testing.T, f *fakeNode, bound time.Duration) *Upgrader {
	srv := httptest.NewTLSServer(f)
	t.Cleanup(srv.Close)
	tlsCfg := srv.Client().Transport.(*http.Transport).TLSClientConfig
	return &Upgrader{API: &NodeAPI{Members: map[string]string{"etcd-1": srv.URL}, TLS: tlsCfg}, Trial: bound}
}

const (
	oldSlot = "1111111111111111"
	newSlot = "2222222222222222"
)

func good(id, digest string) slot.SlotState {
	return slot.SlotState{ID: id, Gen: 1, State: slot.StateGood, Digest: digest}
}

func quiet(string, time.Duration) {}

func TestUpgraderSwap(t *testing.T) {
	img, b := testImage(t, newSlot, "new")
	digest := slot.Digest(b.Manifest)
	oldGood := slot.Status{Member: "etcd-1", Running: good(oldSlot, "olddigest")}
	for _, c := range []struct {
		name    string
		before  slot.Status
		after   func(n int) slot.Status
		putCode int
		wantErr string // "" for success
		puts    int
		reboots int
		bound   time.Duration
	}{
		{name: "good after a trial", before: oldGood, after: func(n int) slot.Status {
			switch {
			case n < 2: // not gone down yet
				return oldGood
			case n < 4:
				return slot.Status{Running: slot.SlotState{ID: newSlot, State: slot.StateTrial, TriesDone: 1}, Waiting: "good for 3s of 30s"}
			}
			return slot.Status{Running: good(newSlot, digest)}
		}, puts: 1, reboots: 1, bound: 20 * time.Second},
		{name: "rolled back", before: oldGood, after: func(n int) slot.Status {
			if n < 2 {
				return oldGood
			}
			return slot.Status{Running: good(oldSlot, "olddigest"), RolledBack: &slot.SlotState{ID: newSlot, State: slot.StateBad, TriesDone: 3, Trial: "etcd never caught up"}}
		}, wantErr: "ROLLED BACK to slot " + oldSlot, puts: 1, reboots: 1},
		{name: "rolled back before it said why", before: oldGood, after: func(n int) slot.Status {
			return slot.Status{Running: good(oldSlot, "olddigest"), RolledBack: &slot.SlotState{ID: newSlot, State: slot.StateBad, TriesDone: 3}}
		}, wantErr: "before it could say why", puts: 1, reboots: 1},
		{name: "runs a third slot", before: oldGood, after: func(n int) slot.Status {
			return slot.Status{Running: good("3333333333333333", "x")}
		}, wantErr: "3333333333333333", puts: 1, reboots: 1},
		{name: "never reboots into it", before: oldGood, after: func(n int) slot.Status {
			return slot.Status{Running: good(oldSlot, "olddigest"), Other: &slot.SlotState{ID: newSlot, State: slot.StateStaged}}
		}, wantErr: "still on slot " + oldSlot, puts: 1, reboots: 1},
		{name: "update refused", before: oldGood, putCode: http.StatusUnprocessableEntity, wantErr: "refused the update", puts: 1},
		{name: "on trial", before: slot.Status{Running: slot.SlotState{ID: oldSlot, State: slot.StateTrial}}, wantErr: "still on trial"},
		{name: "runs it already", before: slot.Status{Running: good(newSlot, digest)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := &fakeNode{before: c.before, after: c.after, putCode: c.putCode}
			bound := c.bound
			if bound == 0 {
				bound = 3 * time.Second
			}
			u := newUpgrader(t, f, bound)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := u.Swap(ctx, "etcd-1", img, true, quiet)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatal(err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("%v, want %q", err, c.wantErr)
			}
			if len(f.put) != c.puts || f.reboots != c.reboots {
				t.Fatalf("%d updates, %d reboots; want %d, %d", len(f.put), f.reboots, c.puts, c.reboots)
			}
			for _, p := range f.put {
				want, _ := b.Bytes()
				if !bytes.Equal(p, want) {
					t.Fatal("the update sent is not the image's slot")
				}
			}
		})
	}
	if err := (&Upgrader{}).Swap(context.Background(), "etcd-1", img, false, quiet); err == nil {
		t.Fatal("a network upgrade without the data disk")
	}
}

// TestUpgraderSendsTheWholeSlotWhenAskedTo: the host leaves out what the
// member's running manifest says it holds; a member that cannot take a
// file from its running slot (its copy rotted, or its node binary is
// older than the derivation) refuses with slot.ErrLeftOut, and the host
// sends the whole slot once more.
func TestUpgraderSendsTheWholeSlotWhenAskedTo(t *testing.T) {
	img, b := testImage(t, newSlot, "new")
	var m slot.Manifest
	if err := json.Unmarshal(b.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	running := m
	running.ID = oldSlot
	running.Files = []slot.File{m.Files[0], m.Files[1], m.Files[2], slot.NewFile(slot.FileUKI, []byte("MZ old"))} // the same node binary
	before := slot.Status{Member: "etcd-1", Running: good(oldSlot, "olddigest")}
	before.Running.Manifest = &running
	digest := slot.Digest(b.Manifest)
	f := &fakeNode{before: before, leftOut: true, after: func(int) slot.Status { return slot.Status{Running: good(newSlot, digest)} }}
	u := newUpgrader(t, f, 3*time.Second)
	var said []string
	if err := u.Swap(context.Background(), "etcd-1", img, true, func(s string, _ time.Duration) { said = append(said, s) }); err != nil {
		t.Fatal(err)
	}
	whole, _ := b.Bytes()
	if len(f.put) != 2 || len(f.put[0]) >= len(whole) || !bytes.Equal(f.put[1], whole) {
		t.Fatalf("%d updates; the first should leave the node binary out, the second be whole", len(f.put))
	}
	if !strings.Contains(strings.Join(said, "\n"), "sending the whole slot") {
		t.Errorf("the resend was not said: %q", said)
	}
}

// A member that rolled back from a slot has spent its tries on it: its
// boots, each up to the trial timeout, kept it out of the cluster.
// Running upgrade again (which "resumes") must not send it the same slot
// again without being told to.
func TestUpgraderDoesNotResendASlotTheMemberRolledBackFrom(t *testing.T) {
	img, _ := testImage(t, newSlot, "new")
	before := slot.Status{Running: good(oldSlot, "olddigest"), RolledBack: &slot.SlotState{ID: newSlot, State: slot.StateBad, TriesDone: 3, Trial: "etcd never caught up"}}
	f := &fakeNode{before: before, after: func(int) slot.Status { return before }}
	u := newUpgrader(t, f, 2*time.Second)
	err := u.Swap(context.Background(), "etcd-1", img, true, quiet)
	if len(f.put) != 0 || f.reboots != 0 {
		t.Fatalf("sent the slot %s rolled back from again (%d updates, %d reboots; %v)", newSlot, len(f.put), f.reboots, err)
	}
	if err == nil {
		t.Fatal("no error")
	}
}

func TestUpgradeOrder(t *testing.T) {
	for _, c := range []struct {
		members []string
		leader  string
		want    []string
	}{
		{[]string{"a", "b", "c"}, "a", []string{"b", "c", "a"}},
		{[]string{"a", "b", "c"}, "c", []string{"a", "b", "c"}},
		{[]string{"a", "b", "c"}, "", []string{"a", "b", "c"}},
		{[]string{"b"}, "a", []string{"b"}},
	} {
		in := slices.Clone(c.members)
		if got := UpgradeOrder(c.members, c.leader); !slices.Equal(got, c.want) || !slices.Equal(in, c.members) {
			t.Errorf("%v leader %q: %v", c.members, c.leader, got)
		}
	}
}

// TestUpgradeWaitsForEveryMemberToSettle: a member running a slot on
// trial reboots by itself if its gate fails; upgrade takes no other
// member down meanwhile (once it did: the check was etcd's health only),
// and refuses before anything changes, etcd's downgrade included, with
// one line naming the member. A member whose node API does not answer
// is refused the same way. Settled, every member passes.
func TestUpgradeWaitsForEveryMemberToSettle(t *testing.T) {
	_, e := oneMember(t)
	one := &fakeNode{before: slot.Status{Running: good(oldSlot, "d")}}
	two := &fakeNode{before: slot.Status{Running: slot.SlotState{ID: newSlot, Gen: 2, State: slot.StateTrial, TriesLeft: 2}, Waiting: "a voter for 3s of 30s"}}
	u := newUpgrader(t, one, 3*time.Second)
	srv := httptest.NewTLSServer(two)
	t.Cleanup(srv.Close)
	u.API.Members["etcd-2"] = srv.URL
	u.AllowDowngrade, u.AllowOutage = true, true
	l := &Lifecycle{Etcd: e, Driver: u, Members: []string{"etcd-1", "etcd-2"}, Timeout: time.Second, Say: quiet}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cur, _ := parseVersion("3.7.3")
	img, _ := testImageOf(t, "3333333333333333", "down", fmt.Sprintf("%d.%d.9", cur.major, cur.minor-1))
	_, err := l.Upgrade(ctx, u, map[string]string{"etcd-1": img}, []string{"etcd-1"})
	if err == nil || !strings.Contains(err.Error(), "etcd-2 runs slot "+newSlot+" on trial (a voter for 3s of 30s): wait until it marks it good or rolls back") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("a member on trial: %v", err)
	}
	if len(one.put) != 0 || one.reboots != 0 {
		t.Fatalf("etcd-1 got %d updates and %d reboots while etcd-2 was on trial", len(one.put), one.reboots)
	}
	if d, err := e.Downgrading(ctx, nil); err != nil || d != "" {
		t.Fatalf("etcd's downgrade enabled before the refusal: %q, %v", d, err)
	}
	u.API.Members["etcd-2"] = "https://" + etcdtest.FreeURL(t, "http").Host
	if err := u.settled(ctx, []string{"etcd-1", "etcd-2"}); err == nil || !strings.Contains(err.Error(), "etcd-2") || !strings.Contains(err.Error(), "every other one runs a good slot") {
		t.Fatalf("a node API that does not answer: %v", err)
	}
	u.API.Members["etcd-2"] = srv.URL
	two.mu.Lock()
	two.before = slot.Status{Running: good(newSlot, "d")}
	two.mu.Unlock()
	if err := u.settled(ctx, []string{"etcd-1", "etcd-2"}); err != nil {
		t.Fatalf("settled: %v", err)
	}
	if got := l.settledOnes("etcd-1"); !slices.Equal(got, []string{"etcd-2"}) {
		t.Errorf("settledOnes(etcd-1) = %v", got)
	}
}
