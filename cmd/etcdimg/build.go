package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/image"
	"etcdimg/image/deb"
	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/restore"
	"etcdimg/internal/spec"
)

// bootFlags name the inputs every image is made from.
type bootFlags struct {
	kernel, bootloader, node, init string
}

func (f *bootFlags) register(c *cobra.Command) {
	c.Flags().StringVar(&f.kernel, "kernel-package", "", "Debian kernel package (.deb) (default: newest linux-image-*-cloud-amd64 in the package cache)")
	c.Flags().StringVar(&f.bootloader, "bootloader-package", "", "Debian systemd-boot-efi package (.deb) (default: the one in the package cache)")
	c.Flags().StringVar(&f.node, "node-binary", "", "the in-image multi-call binary (default: etcdnode beside this etcdimg)")
	c.Flags().StringVar(&f.init, "init-binary", "", "the initramfs's /init (default: etcdinit beside this etcdimg)")
}

func (f *bootFlags) inputs() (image.Inputs, error) {
	in := image.Inputs{KernelDeb: f.kernel, BootloaderDeb: f.bootloader, NodeBinary: f.node, InitBinary: f.init}
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
	for flag, p := range map[string]string{"--kernel-package": in.KernelDeb, "--bootloader-package": in.BootloaderDeb, "--node-binary": in.NodeBinary, "--init-binary": in.InitBinary} {
		if _, err := os.Stat(p); err != nil {
			return in, fmt.Errorf("%s: %w", flag, err)
		}
	}
	return in, nil
}

// outputFlags choose what `build` writes: the platform and the formats.
// Commands that boot the images here (up, replace, roll, restore) write
// the default: a raw image per member for QEMU.
type outputFlags struct {
	formats, platform string
	compress          bool
}

func (o *outputFlags) register(c *cobra.Command) {
	c.Flags().StringVar(&o.formats, "format", "raw", "output formats, comma-separated: "+formatHelp())
	c.Flags().StringVar(&o.platform, "platform", layout.PlatformQEMU, "where the images boot: qemu or metal (an image per member, its config inside), or aws, gcp, azure, openstack (one image for every member; each member's config is its instance's user-data)")
	c.Flags().BoolVar(&o.compress, "compress", false, "compress qcow2 images")
}

func formatHelp() string {
	var parts []string
	for _, f := range image.Formats {
		parts = append(parts, fmt.Sprintf("%s (%s)", f.Name, f.For))
	}
	return strings.Join(parts, ", ")
}

// platforms are --platform's values; the cloud ones get a generic image.
var platforms = map[string]bool{
	layout.PlatformQEMU: false, layout.PlatformMetal: false,
	layout.PlatformAWS: true, layout.PlatformGCP: true, layout.PlatformAzure: true, layout.PlatformOpenStack: true,
}

// check validates the flags before any work.
func (o *outputFlags) check() ([]image.Format, bool, error) {
	cloud, ok := platforms[o.platform]
	if !ok {
		return nil, false, fmt.Errorf("--platform: unknown platform %q; use qemu, metal, aws, gcp, azure or openstack", o.platform)
	}
	formats, err := image.ParseFormats(o.formats)
	return formats, cloud, err
}

func buildCmd() *cobra.Command {
	var f specFlags
	var bf bootFlags
	var of outputFlags
	c := &cobra.Command{
		Use:   "build",
		Short: "Render, then write a bootable disk image per member to OUT/images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, _, _, err := buildImages(cmd, &f, &bf, &of, nil)
			return err
		},
	}
	f.register(c)
	bf.register(c)
	of.register(c)
	return c
}

// buildImages is `build`: render, then one image per member (or only
// those named in only), reporting both. replace and roll run it too, so
// that every image they boot is made from the current spec and PKI
// before any member goes down.
func buildImages(cmd *cobra.Command, f *specFlags, bf *bootFlags, of *outputFlags, only []string) (*spec.Cluster, outdir.Layout, map[string]string, error) {
	// The flags, the spec, then the image inputs, are read and checked
	// before anything is written: a bad package fails a build that has
	// not touched the output directory.
	if of == nil {
		of = &outputFlags{formats: "raw", platform: layout.PlatformQEMU}
	}
	formats, cloud, err := of.check()
	if err != nil {
		return nil, "", nil, err
	}
	c, from, err := f.load(cmd)
	if err != nil {
		return nil, "", nil, err
	}
	if cloud {
		if plan, err := restore.Load(outdir.Layout(f.out)); err != nil {
			return nil, "", nil, err
		} else if plan != nil {
			return nil, "", nil, fmt.Errorf("--platform %s: %s holds a restored cluster (%s), and a cloud image is one image shared by every instance that never carries data; build per-member images with --platform metal (each carries the snapshot in its %s partition) and boot each instance from its own", of.platform, f.out, restore.PlanFile, layout.RestoreLabel)
		}
	}
	in, err := bf.inputs()
	if err != nil {
		return nil, "", nil, err
	}
	start := time.Now()
	boot, err := image.PrepareBoot(in)
	if err != nil {
		return nil, "", nil, err
	}
	dir, res, err := f.renderLoaded(cmd, c, from)
	if err != nil {
		return nil, "", nil, err
	}
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "boot     kernel %s, %d modules, initramfs %.1f MiB (%.1f MiB unpacked)\n",
		boot.KernelVersion, len(boot.Modules), mib(int64(len(boot.Initrd))), mib(int64(len(boot.InitrdRaw))))
	plan, err := restore.Load(dir)
	if err != nil {
		return nil, "", nil, err
	}
	var snap string
	if plan != nil {
		snap = plan.SnapshotPath(dir)
		fmt.Fprintf(w, "restore  every image carries %s (%.1f MiB, revision %d, %d keys) for the new cluster %s\n", snap, mib(plan.Size), plan.Revision, plan.TotalKeys, plan.Token)
	}
	var images []image.Member
	if cloud {
		images = append(images, image.Member{Cluster: c.Name, Name: "etcdimg-" + of.platform, Restore: snap, Platform: of.platform})
	} else {
		for _, m := range c.Members {
			if only == nil || slices.Contains(only, m.Name) {
				images = append(images, image.Member{Cluster: c.Name, Name: m.Name, Ignition: res.Ignition[m.Name], Restore: snap, Platform: of.platform})
			}
		}
	}
	built, err := image.WriteAll(dir.ImagesDir(), images, boot, formats, image.FormatOptions{Compress: of.compress})
	if err != nil {
		return nil, "", nil, err
	}
	paths := map[string]string{}
	for _, b := range built {
		state := "unchanged"
		switch {
		case b.Previous != "":
			state = "new; previous kept at " + b.Previous
		case b.New:
			state = "new"
		}
		fmt.Fprintf(w, "image    %-8s %s (%.0f MiB, %.1f MiB allocated, %s)\n", b.Member, b.Path, mib(b.Size), mib(b.Allocated), state)
		if b.Format == "raw" && !cloud {
			paths[b.Member] = b.Path
		}
	}
	if cloud {
		for _, m := range c.Members {
			fmt.Fprintf(w, "user-data %-8s %-15s %s\n", m.Name, m.IP, dir.Ignition(m.Name))
		}
		fmt.Fprintf(w, "boot one instance per member from the image, with that member's fixed private IP and its config as user-data\n")
	}
	fmt.Fprintf(w, "built %d image files in %.1fs\n", len(built), time.Since(start).Seconds())
	return c, dir, paths, nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
