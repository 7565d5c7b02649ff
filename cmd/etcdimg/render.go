package main

import (
	"fmt"
	"io"
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

// specFlags are the flags every command that reads a spec shares.
type specFlags struct {
	config string
	nodes  int
	out    string
}

func (f *specFlags) register(c *cobra.Command) {
	c.Flags().StringVar(&f.config, "config", "", "cluster spec to read (default: OUT/etcdimg.yaml, else the default spec)")
	c.Flags().IntVar(&f.nodes, "nodes", 3, "members of the default spec, when there is no spec file")
	outFlag(c, &f.out)
}

func (f *specFlags) load(c *cobra.Command) (*spec.Cluster, string, error) {
	if err := outdir.CheckFlag(f.out); err != nil {
		return nil, "", err
	}
	return render.LoadSpec(render.Source{
		ConfigPath: f.config,
		Nodes:      f.nodes,
		NodesSet:   c.Flags().Changed("nodes"),
	}, outdir.Layout(f.out))
}

func initCmd() *cobra.Command {
	var nodes int
	var path string
	c := &cobra.Command{
		Use:   "init",
		Short: "Write the default cluster spec for editing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if render.Exists(path) {
				return fmt.Errorf("init: %s already exists; edit it, or pass --config to write elsewhere", path)
			}
			if nodes < 1 || nodes > spec.MaxMembers {
				return fmt.Errorf("--nodes %d: want 1 to %d members (3 or 5 tolerate failures)", nodes, spec.MaxMembers)
			}
			c := spec.Default(nodes)
			b, err := spec.Marshal(c)
			if err != nil {
				return err
			}
			if _, err := outdir.Write(filepath.Dir(path), []outdir.File{{Path: filepath.Base(path), Data: b, Mode: 0o644}}); err != nil {
				return fmt.Errorf("init: %w", err)
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

func renderCmd() *cobra.Command {
	var f specFlags
	c := &cobra.Command{
		Use:   "render",
		Short: "Write the spec, PKI, Ignition configs, etcdctl.env and prometheus.yml to the output directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, _, err := f.render(cmd)
			return err
		},
	}
	f.register(c)
	return c
}

// render loads the spec, renders the output directory and reports it:
// the first half of both `render` and `build`.
func (f *specFlags) render(cmd *cobra.Command) (*spec.Cluster, outdir.Layout, error) {
	c, from, err := f.load(cmd)
	if err != nil {
		return nil, outdir.Layout(f.out), err
	}
	dir, _, err := f.renderLoaded(cmd, c, from)
	return c, dir, err
}

// renderLoaded renders an already loaded spec and reports it.
func (f *specFlags) renderLoaded(cmd *cobra.Command, c *spec.Cluster, from string) (outdir.Layout, *render.Result, error) {
	dir := outdir.Layout(f.out)
	printWarnings(c)
	res, err := render.Run(c, dir)
	if err != nil {
		return dir, nil, err
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(os.Stderr, "warning: %s\n", w)
	}
	printRender(cmd.OutOrStdout(), c, from, dir, res)
	return dir, res, nil
}

func printWarnings(c *spec.Cluster) {
	for _, w := range c.Warnings() {
		fmt.Fprintf(os.Stderr, "warning: %s\n", w)
	}
}

func printRender(w io.Writer, c *spec.Cluster, from string, dir outdir.Layout, res *render.Result) {
	state := func(rel string) string {
		if slices.Contains(res.Changed, rel) {
			return "written"
		}
		return "unchanged"
	}
	ca, _ := pki.ParseCert(res.PKI.CACert)
	caState := "reused"
	if slices.Contains(res.Issued, pki.CACertFile) {
		caState = "new"
	}
	fmt.Fprintf(w, "spec     %s\n", from)
	fmt.Fprintf(w, "CA       %s (%s, %s, until %s)\n", dir.PKIFile(pki.CACertFile), caState, pki.KeyAlgorithm(ca), ca.NotAfter.Format(time.DateOnly))
	for _, m := range c.Members {
		cert := "reused"
		if slices.Contains(res.Issued, pki.MemberCertFile(m.Name)) {
			cert = "issued"
		}
		rel, _ := dir.Rel(dir.Ignition(m.Name))
		st, _ := os.Stat(dir.Ignition(m.Name))
		fmt.Fprintf(w, "member   %-8s %-15s cert %-6s  %s (%d bytes, %s)\n", m.Name, m.IP, cert, dir.Ignition(m.Name), st.Size(), state(rel))
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
}
