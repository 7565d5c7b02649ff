package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/deb"
	"etcdimg/image"
	"etcdimg/outdir"
	"etcdimg/restore"
	"etcdimg/spec"
)

// bootFlags name the inputs every image is made from.
type bootFlags struct {
	kernel, bootloader, node string
}

func (f *bootFlags) register(c *cobra.Command) {
	c.Flags().StringVar(&f.kernel, "kernel-package", "", "Debian kernel package (.deb) (default: newest linux-image-*-cloud-amd64 in the package cache)")
	c.Flags().StringVar(&f.bootloader, "bootloader-package", "", "Debian systemd-boot-efi package (.deb) (default: the one in the package cache)")
	c.Flags().StringVar(&f.node, "node-binary", "", "the in-image multi-call binary (default: etcdnode beside this etcdimg)")
}

func (f *bootFlags) inputs() (image.Inputs, error) {
	in := image.Inputs{KernelDeb: f.kernel, BootloaderDeb: f.bootloader, NodeBinary: f.node}
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
	if in.NodeBinary == "" {
		exe, err := os.Executable()
		if err != nil {
			return in, err
		}
		in.NodeBinary = filepath.Join(filepath.Dir(exe), "etcdnode")
	}
	for flag, p := range map[string]string{"--kernel-package": in.KernelDeb, "--bootloader-package": in.BootloaderDeb, "--node-binary": in.NodeBinary} {
		if _, err := os.Stat(p); err != nil {
			return in, fmt.Errorf("%s: %w", flag, err)
		}
	}
	return in, nil
}

func buildCmd() *cobra.Command {
	var f specFlags
	var bf bootFlags
	c := &cobra.Command{
		Use:   "build",
		Short: "Render, then write a bootable disk image per member to OUT/images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, _, _, err := buildImages(cmd, &f, &bf, nil)
			return err
		},
	}
	f.register(c)
	bf.register(c)
	return c
}

// buildImages is `build`: render, then one image per member (or only
// those named in only), reporting both. replace and roll run it too, so
// that every image they boot is made from the current spec and PKI
// before any member goes down.
func buildImages(cmd *cobra.Command, f *specFlags, bf *bootFlags, only []string) (*spec.Cluster, outdir.Layout, map[string]string, error) {
	// The spec, then the image inputs, are read and checked before
	// anything is written: a bad package fails a build that has not
	// touched the output directory.
	c, from, err := f.load(cmd)
	if err != nil {
		return nil, "", nil, err
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
	var names []string
	for _, m := range c.Members {
		if only == nil || slices.Contains(only, m.Name) {
			names = append(names, m.Name)
		}
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
	built, err := image.WriteAll(dir.ImagesDir(), c.Name, names, res.Ignition, boot, snap)
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
		paths[b.Member] = b.Path
	}
	fmt.Fprintf(w, "built %d images in %.1fs\n", len(built), time.Since(start).Seconds())
	return c, dir, paths, nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
