package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/image"
	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
)

func buildCmd(a *app) *cobra.Command {
	f := specFlags{app: a}
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
// before any member goes down. The flags, the spec, then the image
// inputs are read and checked before anything is written: a bad package
// fails a build that has not touched the output directory.
func buildImages(cmd *cobra.Command, f *specFlags, bf *bootFlags, of *outputFlags, only []string) (*spec.Cluster, outdir.Layout, map[string]string, error) {
	if of == nil {
		of = &outputFlags{formats: "raw", platform: layout.PlatformQEMU}
	}
	b, err := of.build(only)
	if err != nil {
		return nil, "", nil, err
	}
	c, from, err := f.load(cmd)
	if err != nil {
		return nil, "", nil, err
	}
	b.Cluster, b.Dir = c, f.dir()
	if err := b.Check(); err != nil {
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
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "boot     kernel %s, %d modules, initramfs %.1f MiB (%.1f MiB unpacked)\n",
		boot.KernelVersion, len(boot.Modules), mib(int64(len(boot.Initrd))), mib(int64(len(boot.InitrdRaw))))
	built, err := b.Write(boot, res.Ignition)
	if built != nil && built.Plan != nil {
		p := built.Plan
		fmt.Fprintf(w, "restore  every image carries %s (%.1f MiB, revision %d, %d keys) for the new cluster %s\n", p.SnapshotPath(dir), mib(p.Size), p.Revision, p.TotalKeys, p.Token)
	}
	if err != nil {
		return nil, "", nil, err
	}
	for _, i := range built.Files {
		fmt.Fprintf(w, "image    %-8s %s (%.0f MiB, %.1f MiB allocated, %s)\n", i.Member, i.Path, mib(i.Size), mib(i.Allocated), i.State())
	}
	if b.Cloud() {
		for _, m := range c.Members {
			fmt.Fprintf(w, "user-data %-8s %-15s %s\n", m.Name, m.IP, dir.Ignition(m.Name))
		}
		fmt.Fprintf(w, "boot one instance per member from the image, with that member's fixed private IP and its config as user-data\n")
	}
	fmt.Fprintf(w, "built %d image files in %.1fs\n", len(built.Files), time.Since(start).Seconds())
	return c, dir, built.Raw, nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
