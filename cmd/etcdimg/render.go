package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
)

func initCmd() *cobra.Command {
	var nodes int
	var path string
	c := &cobra.Command{
		Use:   "init",
		Short: "Write the default cluster spec for editing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := render.WriteDefaultSpec(path, nodes)
			if err != nil {
				return err
			}
			printWarnings(c)
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (%d members); edit it, then: etcdimg render --config %s\n", path, nodes, path)
			return nil
		},
	}
	c.Flags().IntVar(&nodes, "nodes", 3, "number of members")
	c.Flags().StringVar(&path, "config", "etcdimg.yaml", "where to write the spec")
	return c
}

func renderCmd(a *app) *cobra.Command {
	f := specFlags{app: a}
	c := &cobra.Command{
		Use:   "render",
		Short: "Write the spec, PKI, Ignition configs, etcdctl.env and prometheus.yml to the output directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, from, err := f.load(cmd)
			if err == nil {
				_, _, err = f.renderLoaded(cmd, c, from)
			}
			return err
		},
	}
	f.register(c)
	return c
}

// renderLoaded renders an already loaded spec and reports it.
func (f *specFlags) renderLoaded(cmd *cobra.Command, c *spec.Cluster, from string) (outdir.Layout, *render.Result, error) {
	dir := f.dir()
	printWarnings(c)
	res, err := render.Run(c, dir)
	if err != nil {
		return dir, nil, err
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(os.Stderr, "warning: %s\n", w)
	}
	res.Report(cmd.OutOrStdout(), c, dir, from)
	return dir, res, nil
}

func printWarnings(c *spec.Cluster) {
	for _, w := range c.Warnings() {
		fmt.Fprintf(os.Stderr, "warning: %s\n", w)
	}
}
