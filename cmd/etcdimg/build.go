package main

import (
	"time"

	"github.com/spf13/cobra"

	"etcdimg/image"
	"etcdimg/internal/layout"
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
			_, err := buildImages(cmd, &f, &bf, &of, nil)
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
func buildImages(cmd *cobra.Command, f *specFlags, bf *bootFlags, of *outputFlags, only []string) (map[string]string, error) {
	if of == nil {
		of = &outputFlags{formats: "raw", platform: layout.PlatformQEMU}
	}
	b, err := of.build(only)
	if err != nil {
		return nil, err
	}
	c, from, err := f.load(cmd)
	if err != nil {
		return nil, err
	}
	b.Cluster, b.Dir = c, f.dir()
	if err := b.Check(); err != nil {
		return nil, err
	}
	in, err := bf.inputs()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	boot, err := image.PrepareBoot(in)
	if err != nil {
		return nil, err
	}
	_, res, err := f.renderLoaded(cmd, c, from)
	if err != nil {
		return nil, err
	}
	built, err := b.WriteReport(cmd.OutOrStdout(), boot, res.Ignition, start)
	if err != nil {
		return nil, err
	}
	return built.Raw, nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
