package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
	"etcdimg/pki"
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
	w := cmd.OutOrStdout()
	state := map[bool]string{true: "written", false: "unchanged"}
	issued := func(name, yes, no string) string {
		return map[bool]string{true: yes, false: no}[slices.Contains(res.Issued, name)]
	}
	ca, _ := pki.ParseCert(res.PKI.CACert)
	fmt.Fprintf(w, "spec     %s\n", from)
	fmt.Fprintf(w, "CA       %s (%s, %s, until %s)\n", dir.PKIFile(pki.CACertFile), issued(pki.CACertFile, "new", "reused"), pki.KeyAlgorithm(ca), ca.NotAfter.Format(time.DateOnly))
	for _, m := range c.Members {
		rel, _ := dir.Rel(dir.Ignition(m.Name))
		st, _ := os.Stat(dir.Ignition(m.Name))
		fmt.Fprintf(w, "member   %-8s %-15s cert %-6s  %s (%d bytes, %s)\n", m.Name, m.IP, issued(pki.MemberCertFile(m.Name), "issued", "reused"), dir.Ignition(m.Name), st.Size(), state[slices.Contains(res.Changed, rel)])
	}
	fmt.Fprintf(w, "etcdctl  source %s\n", dir.EtcdctlEnv())
	scrape := "plain HTTP"
	if c.Metrics.TLS {
		scrape = "mTLS with " + dir.PKIFile(pki.PrometheusCert)
	}
	fmt.Fprintf(w, "metrics  %s (%s; alert rules in %s)\n", dir.Prometheus(), scrape, render.RulesFile)
	fmt.Fprintf(w, "k8s      %s (%s for kubeadm, %s for k3s/RKE2; the API server's certificate may use /registry/ only)\n", filepath.Join(dir.Dir(), render.KubeDir), render.KubeadmFile, render.K3sFile)
	if len(res.Retired) > 0 {
		fmt.Fprintf(w, "retired  %s: members no longer in the spec, moved under %s/ (their data disks are left where they are)\n", strings.Join(res.Retired, ", "), filepath.Join(dir.Dir(), render.RetiredDir))
	}
	fmt.Fprintf(w, "%d files, %d written, %d unchanged\n", len(res.Files), len(res.Changed), len(res.Files)-len(res.Changed))
	return dir, res, nil
}

func printWarnings(c *spec.Cluster) {
	for _, w := range c.Warnings() {
		fmt.Fprintf(os.Stderr, "warning: %s\n", w)
	}
}
