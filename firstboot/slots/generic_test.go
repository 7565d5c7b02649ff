package slots

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"etcdimg/internal/layout"
	"etcdimg/internal/slot"
)

// genericFixture is a cloud member's ESP as its generic image left it:
// the running slot names the platform and no cluster or member, and
// carries no config (the member's came from its user-data).
func genericFixture(t *testing.T, platform string) *fixture {
	t.Helper()
	f := newFixture(t, slot.Entry{Gen: 1})
	if err := os.RemoveAll(filepath.Join(f.root, layout.SlotsDir, runID)); err != nil {
		t.Fatal(err)
	}
	f.writeSlot(f.run, f.cloudBundle(runID, platform, "", "", nil))
	return f
}

// cloudBundle signs a slot for platform with the fixture's key, for
// cluster and member with config (a member's slot) or for neither
// without one (a generic image's).
func (f *fixture) cloudBundle(id, platform, cluster, member string, config []byte) slot.Bundle {
	f.t.Helper()
	files := map[string][]byte{
		slot.FileUKI:        []byte("MZ uki " + id + " " + layout.PlatformArg + "=" + platform + strings.Repeat("u", 3000)),
		slot.FileNode:       []byte("ELF node " + strings.Repeat("n", 5000)),
		slot.FileSigningKey: pubPEM(f.t, f.key),
	}
	if config != nil {
		files[slot.FileConfig] = config
	}
	b, err := slot.NewBundle(slot.Manifest{Format: slot.Format, ID: id, Cluster: cluster, Member: member, Platform: platform, Kernel: "6.1.0", Etcd: "3.7.3"}, files, f.key)
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

// TestACloudMemberTakesItsOwnSlotForItsPlatform: a cloud member runs the
// generic image's slot, which names no cluster or member; the update
// upgrade builds for it names its cluster, its name and its platform and
// carries its config, and is installed (the member's identity, from its
// user-data, is what it must be for). A slot for another platform, the
// generic image's own slot and another member's are refused, and
// nothing is written.
func TestACloudMemberTakesItsOwnSlotForItsPlatform(t *testing.T) {
	const next = "2222222222222222"
	config := []byte(`{"ignition":{"version":"3.4.0"},"tag":"etcd-1's own"}`)
	for _, running := range []string{layout.PlatformAWS, layout.PlatformGCP, layout.PlatformAzure, layout.PlatformOpenStack} {
		other := layout.PlatformGCP
		if running == other {
			other = layout.PlatformAWS
		}
		for _, tc := range []struct {
			name     string
			platform string
			cluster  string
			member   string
			config   []byte
			say      string // "" when it is installed
		}{
			{"its own slot for its platform", running, testCluster, testMember, config, ""},
			{"its own slot for another cloud", other, testCluster, testMember, config, `built for platform "` + other + `", this member runs "` + running + `"`},
			{"its own slot for metal", layout.PlatformMetal, testCluster, testMember, config, `built for platform "metal"`},
			{"its own slot for qemu", "", testCluster, testMember, config, `built for platform ""`},
			{"the generic image's slot", running, "", "", nil, "cluster"},
			{"another member's slot", running, testCluster, "etcd-2", config, "etcd-2"},
		} {
			t.Run(running+"/"+tc.name, func(t *testing.T) {
				f := genericFixture(t, running)
				st, err := f.esp().Status()
				if err != nil || st.Member != "" || st.Running.Manifest == nil || st.Running.Manifest.Platform != running {
					t.Fatalf("the generic slot's status %+v: %v", st, err)
				}
				before := tree(t, f.root)
				b := f.cloudBundle(next, tc.platform, tc.cluster, tc.member, tc.config)
				m, err := f.install(raw(t, b))
				if tc.say != "" {
					if err == nil || !strings.Contains(err.Error(), tc.say) {
						t.Fatalf("err %v, want %q", err, tc.say)
					}
					if after := tree(t, f.root); !mapsEqual(before, after) {
						t.Fatal("a refused update changed the ESP")
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if m.ID != next || m.Platform != running || m.Member != testMember {
					t.Fatalf("installed %+v", m)
				}
				got, err := os.ReadFile(filepath.Join(f.root, layout.SlotsDir, next, slot.FileConfig))
				if err != nil || !bytes.Equal(got, config) {
					t.Fatalf("the staged slot's config %q: %v", got, err)
				}
				if _, err := os.Stat(filepath.Join(f.root, layout.SlotsDir, runID, slot.FileConfig)); err == nil {
					t.Error("the running generic slot got a config")
				}
				if st, err := f.esp().Status(); err != nil || st.Other == nil || st.Other.ID != next || st.Other.State != slot.StateStaged {
					t.Fatalf("status after the install %+v: %v", st, err)
				}
				// Once it boots the new slot, that slot names the member.
				sdBoot(t, f.root)
				if st, err := (ESP{Root: f.root, Running: next}).Status(); err != nil || st.Member != testMember || st.Running.State != slot.StateTrial {
					t.Fatalf("booted the new slot: %+v %v", st, err)
				}
			})
		}
	}
}
