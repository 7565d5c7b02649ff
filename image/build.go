package image

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"etcdimg/image/deb"
	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/restore"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// Building an output directory's images: what `build` does with what
// render produced (the spec, each member's config, a restore's plan).
// image sits above render in the flow, so it takes render's output as
// plain values and never calls it: the caller renders, then writes.

// Platforms are where images boot; true marks a cloud, which boots one
// generic image for every member (each instance's config is its
// user-data) instead of an image per member with its config inside.
var Platforms = map[string]bool{
	layout.PlatformQEMU: false, layout.PlatformMetal: false,
	layout.PlatformAWS: true, layout.PlatformGCP: true, layout.PlatformAzure: true, layout.PlatformOpenStack: true,
}

// Build is one build of an output directory's images.
type Build struct {
	Cluster  *spec.Cluster
	Dir      outdir.Layout
	Platform string // a key of Platforms
	Formats  []Format
	Options  FormatOptions
	Only     []string // the members to build; nil builds every one
	// MemberSlots, on a cloud, builds what `upgrade` installs instead of
	// the generic image: a raw image per member for the platform, whose
	// slot carries the member's config, cluster and name like a metal
	// image's. A cloud member boots the generic image once, from its
	// user-data; a slot installed from these gives it its own config,
	// which it boots from then on. They go to Dir.UpgradeImages, apart
	// from the images uploaded to the cloud, and images/manifest.json
	// (which names those) is left alone. On qemu and metal every image
	// is a member's already, and the build is as without it.
	MemberSlots bool
}

// Cloud reports whether the build writes one generic image.
func (b Build) Cloud() bool { return Platforms[b.Platform] && !b.MemberSlots }

// upgradeOnly reports whether the build writes MemberSlots' images.
func (b Build) upgradeOnly() bool { return Platforms[b.Platform] && b.MemberSlots }

// Check refuses, before anything is read or written, what cannot be
// built from the directory: a cloud image of a restored cluster, as a
// cloud image is shared by every instance and never carries data (and
// so no cloud member runs the restored cluster).
func (b Build) Check() error {
	if !Platforms[b.Platform] {
		return nil
	}
	plan, err := restore.Load(b.Dir)
	if err != nil {
		return err
	}
	if plan != nil {
		return fmt.Errorf("--platform %s: %s holds a restored cluster (%s), and a cloud image is one image shared by every instance that never carries data; build per-member images with --platform metal (each carries the snapshot in its %s partition) and boot each instance from its own", b.Platform, b.Dir.Dir(), restore.PlanFile, layout.RestoreLabel)
	}
	return nil
}

// Written says what Write wrote.
type Written struct {
	// Plan is the restore every image carries (its snapshot in the
	// restore partition), or nil.
	Plan  *restore.Plan
	Files []Built
	// Raw is each member's raw image, what boots it here (`up`,
	// replace, roll) or whose slot upgrade installs; empty for a cloud
	// build of the generic image.
	Raw map[string]string
}

// Members are the images the build writes: one per member (of Only,
// when set) with its config from ignition (render's, byte for byte), or
// one generic image named for the platform on a cloud; each carries
// snapshot when it is not "".
func (b Build) Members(ignition map[string][]byte, snapshot, clusterID string) []Member {
	if b.Cloud() {
		return []Member{{Cluster: b.Cluster.Name, Name: "etcdimg-" + b.Platform, Restore: snapshot, Platform: b.Platform}}
	}
	var images []Member
	for _, m := range b.Cluster.Members {
		if b.Only == nil || slices.Contains(b.Only, m.Name) {
			images = append(images, Member{Cluster: b.Cluster.Name, ClusterID: clusterID, Name: m.Name, Ignition: ignition[m.Name], Restore: snapshot, Platform: b.Platform})
		}
	}
	return images
}

// clusterID is the cluster ID render recorded (hex), which every slot's
// manifest names.
func (b Build) clusterID() (string, error) {
	raw, err := os.ReadFile(b.Dir.ClusterRecord())
	if err != nil {
		return "", fmt.Errorf("image: %w; run `etcdimg render` first", err)
	}
	var rec struct {
		ClusterID string `json:"clusterID"`
	}
	if err := json.Unmarshal(raw, &rec); err != nil || rec.ClusterID == "" {
		return "", fmt.Errorf("image: %s names no cluster ID (%v); run `etcdimg render`", b.Dir.ClusterRecord(), err)
	}
	id, err := strconv.ParseUint(rec.ClusterID, 16, 64)
	if err != nil || id == 0 {
		return "", fmt.Errorf("image: %s: cluster ID %q is not hex; run `etcdimg render`", b.Dir.ClusterRecord(), rec.ClusterID)
	}
	return strconv.FormatUint(id, 16), nil
}

// Write writes the images into the directory's images/ from boot and the
// members' configs. The returned Written carries the restore's plan as
// soon as it is read, even when writing fails later.
func (b Build) Write(boot *Boot, ignition map[string][]byte) (*Written, error) {
	plan, err := restore.Load(b.Dir)
	if err != nil {
		return nil, err
	}
	w := &Written{Plan: plan, Raw: map[string]string{}}
	var snapshot string
	if plan != nil {
		snapshot = plan.SnapshotPath(b.Dir)
	}
	if boot.Signer, boot.SignerPub, err = pki.LoadImageSigner(b.Dir.PKI()); err != nil {
		return w, err
	}
	clusterID, err := b.clusterID()
	if err != nil {
		return w, err
	}
	dir := b.Dir.ImagesDir()
	if b.upgradeOnly() {
		dir = b.Dir.UpgradeImages(b.Platform)
	}
	if w.Files, err = WriteAll(dir, b.Members(ignition, snapshot, clusterID), boot, b.Formats, b.Options); err != nil {
		return w, err
	}
	for _, f := range w.Files {
		if f.Format == "raw" && !b.Cloud() {
			w.Raw[f.Member] = f.Path
		}
	}
	if b.upgradeOnly() {
		return w, nil
	}
	if err := writeManifest(b.Dir, w.Files); err != nil {
		return w, fmt.Errorf("image: %s: %w", ManifestFile, err)
	}
	return w, nil
}

// State says what writing did to the file: "unchanged", "new", or new
// with where the image it replaced was kept.
func (b Built) State() string {
	switch {
	case b.Previous != "":
		return "new; previous kept at " + b.Previous
	case b.New:
		return "new"
	}
	return "unchanged"
}

// ResolveInputs fills in the inputs left "": the newest verified kernel
// and the boot loader of the package cache, the node binary and /init
// beside the running executable; then checks that each exists. The
// errors name the command line's flags.
func ResolveInputs(in Inputs) (Inputs, error) {
	var err error
	cache := deb.CacheDir()
	if in.KernelDeb == "" {
		if in.KernelDeb, err = deb.FindVerified(cache, deb.Kernel); err != nil {
			return in, fmt.Errorf("--kernel-package: %w", err)
		}
	}
	if in.BootloaderDeb == "" {
		if in.BootloaderDeb, err = deb.FindVerified(cache, deb.Bootloader); err != nil {
			return in, fmt.Errorf("--bootloader-package: %w", err)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return in, err
	}
	if in.NodeBinary == "" {
		in.NodeBinary = filepath.Join(filepath.Dir(exe), "etcdnode")
	}
	if in.InitBinary == "" {
		in.InitBinary = filepath.Join(filepath.Dir(exe), "etcdinit")
	}
	for _, f := range []struct{ flag, path string }{
		{"--kernel-package", in.KernelDeb}, {"--bootloader-package", in.BootloaderDeb},
		{"--node-binary", in.NodeBinary}, {"--init-binary", in.InitBinary},
	} {
		if _, err := os.Stat(f.path); err != nil {
			return in, fmt.Errorf("%s: %w", f.flag, err)
		}
	}
	return in, nil
}
