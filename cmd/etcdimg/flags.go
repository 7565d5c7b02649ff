package main

import (
	"github.com/spf13/cobra"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
)

// app holds the flags every verb shares, registered once on the root
// command: a verb takes it and reads the output directory from it instead
// of registering --out itself.
type app struct {
	out string
}

// register adds the shared flags to the root command.
func (a *app) register(root *cobra.Command) {
	root.PersistentFlags().StringVar(&a.out, "out", outdir.Default, "output directory")
}

// dir is the output directory --out names.
func (a *app) dir() outdir.Layout { return outdir.Layout(a.out) }

// built reads the spec of the output directory that `build` wrote.
func (a *app) built() (*spec.Cluster, outdir.Layout, error) { return loadBuilt(a.out) }
