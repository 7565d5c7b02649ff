package image

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"etcdimg/internal/layout"
	"etcdimg/internal/restore"
	"etcdimg/internal/slot"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

func raw(t *testing.T) []Format {
	t.Helper()
	f, ok := FormatNamed("raw")
	if !ok {
		t.Fatal("no raw format")
	}
	return []Format{f}
}

// configs stand for render's configs: each member's own bytes.
func configs(c *spec.Cluster) map[string][]byte {
	m := map[string][]byte{}
	for _, n := range c.Names() {
		m[n] = []byte(`{"member":"` + n + `"}`)
	}
	return m
}

// TestBuildWritesTheMembersImagesFromRendersConfigs: a per-member build
// writes OUT/images/NAME.img for the members asked (every one, or Only),
// each with its own config, and returns the raw images that boot them.
func TestBuildWritesTheMembersImagesFromRendersConfigs(t *testing.T) {
	c := spec.Default(3)
	dir := testDir(t)
	b := Build{Cluster: c, Dir: dir, Platform: layout.PlatformQEMU, Formats: raw(t), Only: []string{"etcd-2"}}
	if err := b.Check(); err != nil {
		t.Fatal(err)
	}
	cfgs := configs(c)
	w, err := b.Write(fakeBoot(), cfgs)
	if err != nil {
		t.Fatal(err)
	}
	if w.Plan != nil || len(w.Files) != 1 || w.Files[0].Path != dir.Image("etcd-2") {
		t.Fatalf("wrote %+v (plan %v), want etcd-2's image alone", w.Files, w.Plan)
	}
	if len(w.Raw) != 1 || w.Raw["etcd-2"] != dir.Image("etcd-2") {
		t.Errorf("raw images %v", w.Raw)
	}
	b.Only = nil
	ms := b.Members(cfgs, "", "1a2b")
	if len(ms) != 3 {
		t.Fatalf("every member: %d images", len(ms))
	}
	for _, m := range ms {
		if string(m.Ignition) != string(cfgs[m.Name]) || m.Cluster != c.Name || m.Platform != layout.PlatformQEMU || m.Generic() {
			t.Errorf("image %+v does not carry its member's config", m)
		}
	}
}

// TestACloudBuildIsOneGenericImage: on a cloud the build is one image
// for every member, carrying no config, and nothing boots here from it.
func TestACloudBuildIsOneGenericImage(t *testing.T) {
	c := spec.Default(3)
	b := Build{Cluster: c, Dir: testDir(t), Platform: layout.PlatformAWS, Formats: raw(t)}
	if !b.Cloud() {
		t.Fatal("aws is not a cloud")
	}
	ms := b.Members(configs(c), "", "1a2b")
	if len(ms) != 1 || ms[0].Name != "etcdimg-aws" || !ms[0].Generic() || ms[0].Platform != layout.PlatformAWS {
		t.Fatalf("cloud images %+v", ms)
	}
	w, err := b.Write(fakeBoot(), configs(c))
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Files) != 1 || filepath.Base(w.Files[0].Path) != "etcdimg-aws.raw" || len(w.Raw) != 0 {
		t.Errorf("wrote %+v, raw %v", w.Files, w.Raw)
	}
}

// TestARestoredClusterGetsNoCloudImage: with a restore planned, a cloud
// build is refused before anything is written; the members' images each
// carry the snapshot.
func TestARestoredClusterGetsNoCloudImage(t *testing.T) {
	c := spec.Default(2)
	dir := testDir(t)
	os.MkdirAll(dir.Dir(), 0o700)
	if err := os.WriteFile(filepath.Join(dir.Dir(), restore.PlanFile), []byte(`{"token":"t","snapshot":"restore/snapshot.db"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Build{Cluster: c, Dir: dir, Platform: layout.PlatformGCP}.Check()
	if err == nil || !strings.HasPrefix(err.Error(), "--platform gcp: "+dir.Dir()+" holds a restored cluster") {
		t.Errorf("cloud build of a restored cluster: %v", err)
	}
	b := Build{Cluster: c, Dir: dir, Platform: layout.PlatformMetal}
	if err := b.Check(); err != nil {
		t.Errorf("metal build of a restored cluster: %v", err)
	}
	for _, m := range b.Members(configs(c), "/snap.db", "1a2b") {
		if m.Restore != "/snap.db" {
			t.Errorf("%s carries no snapshot", m.Name)
		}
	}
}

// TestResolveInputsNamesTheMissingFlag: an input that is not there fails
// the build before any work, naming the flag that sets it.
func TestResolveInputsNamesTheMissingFlag(t *testing.T) {
	d := t.TempDir()
	have := func(name string) string {
		p := filepath.Join(d, name)
		os.WriteFile(p, nil, 0o644)
		return p
	}
	in := Inputs{KernelDeb: have("k.deb"), BootloaderDeb: have("b.deb"), NodeBinary: have("etcdnode"), InitBinary: have("etcdinit")}
	if got, err := ResolveInputs(in); err != nil || got != in {
		t.Fatalf("every input given: %+v, %v", got, err)
	}
	for _, tc := range []struct {
		flag string
		in   func(*Inputs)
	}{
		{"--kernel-package", func(in *Inputs) { in.KernelDeb = filepath.Join(d, "none.deb") }},
		{"--node-binary", func(in *Inputs) { in.NodeBinary = filepath.Join(d, "none") }},
		{"--init-binary", func(in *Inputs) { in.InitBinary = filepath.Join(d, "none") }},
	} {
		broken := in
		tc.in(&broken)
		if _, err := ResolveInputs(broken); err == nil || !strings.HasPrefix(err.Error(), tc.flag+": ") {
			t.Errorf("missing %s: %v", tc.flag, err)
		}
	}
}

func TestBuiltState(t *testing.T) {
	for b, want := range map[Built]string{
		{}:                                "unchanged",
		{New: true}:                       "new",
		{New: true, Previous: "/p/x.img"}: "new; previous kept at /p/x.img",
	} {
		if got := b.State(); got != want {
			t.Errorf("%+v: %q, want %q", b, got, want)
		}
	}
}

// TestUpgradeBuildsACloudMembersOwnSlot: for `upgrade` on a cloud, the
// build writes a raw image per member, apart from the generic image,
// whose signed slot is built for the platform and carries the member's
// config, cluster and name, as a metal image's does; the generic image's
// slot names the same platform, which a member compares before it
// installs an update.
func TestUpgradeBuildsACloudMembersOwnSlot(t *testing.T) {
	for _, platform := range []string{layout.PlatformAWS, layout.PlatformGCP, layout.PlatformAzure, layout.PlatformOpenStack} {
		t.Run(platform, func(t *testing.T) {
			c := spec.Default(2)
			dir := testDir(t)
			cfgs := configs(c)
			generic, err := Build{Cluster: c, Dir: dir, Platform: platform, Formats: raw(t)}.Write(fakeBoot(), cfgs)
			if err != nil {
				t.Fatal(err)
			}
			manifest, _ := os.ReadFile(filepath.Join(dir.ImagesDir(), ManifestFile))
			b := Build{Cluster: c, Dir: dir, Platform: platform, Formats: raw(t), MemberSlots: true}
			if b.Cloud() {
				t.Fatal("a build of the members' slots is the generic image's")
			}
			if err := b.Check(); err != nil {
				t.Fatal(err)
			}
			w, err := b.Write(fakeBoot(), cfgs)
			if err != nil {
				t.Fatal(err)
			}
			if len(w.Files) != len(c.Members) || len(w.Raw) != len(c.Members) {
				t.Fatalf("wrote %+v, raw %v: want a raw image per member", w.Files, w.Raw)
			}
			if after, _ := os.ReadFile(filepath.Join(dir.ImagesDir(), ManifestFile)); !bytes.Equal(after, manifest) {
				t.Error("images/manifest.json changed: it names the images the user uploads")
			}
			pubPEM, err := os.ReadFile(dir.PKIFile(pki.ImageSigningPub))
			if err != nil {
				t.Fatal(err)
			}
			pub, err := slot.ParsePublicKey(pubPEM)
			if err != nil {
				t.Fatal(err)
			}
			_, gm, err := ReadSlot(generic.Files[0].Path)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := gm.File(slot.FileConfig); ok || gm.Cluster != "" || gm.Platform != platform {
				t.Fatalf("the generic image's slot %+v", gm)
			}
			for _, m := range c.Members {
				path := w.Raw[m.Name]
				if filepath.Dir(path) != dir.UpgradeImages(platform) {
					t.Errorf("%s's image is %s, want it in %s", m.Name, path, dir.UpgradeImages(platform))
				}
				sb, sm, err := ReadSlot(path)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := slot.Verify(sb.Manifest, sb.Signature, pub); err != nil {
					t.Errorf("%s: %v", m.Name, err)
				}
				if sm.Cluster != "1a2b" || sm.Member != m.Name || sm.Platform != platform || sm.Platform != gm.Platform {
					t.Errorf("%s's slot is for cluster %q, member %q, platform %q", m.Name, sm.Cluster, sm.Member, sm.Platform)
				}
				if !bytes.Equal(sb.Files[slot.FileConfig], cfgs[m.Name]) {
					t.Errorf("%s's slot carries config %q, want its own", m.Name, sb.Files[slot.FileConfig])
				}
				if arg := layout.PlatformArg + "=" + platform + " " + layout.SlotArg + "=" + sm.ID; !bytes.Contains(sb.Files[slot.FileUKI], []byte(arg)) {
					t.Errorf("%s's UKI does not boot with %s", m.Name, arg)
				}
			}
		})
	}
}
