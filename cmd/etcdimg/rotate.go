package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/outdir"
	"etcdimg/pki"
	"etcdimg/render"
)

func rotateCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "rotate",
		Short: "Reissue certificates and roll them out",
	}
	c.AddCommand(rotateCertsCmd())
	return c
}

// rotateCertsCmd reissues every member's certificate and the admin's (the
// CA is kept), rebuilds the images and rolls them out keeping every data
// disk, then reissues the application clients' certificates. The old
// certificates and keys are moved to OUT/retired/<time>/.
func rotateCertsCmd() *cobra.Command {
	var f lifecycleFlags
	c := &cobra.Command{
		Use:   "certs",
		Short: "Reissue every member, admin and client certificate under the same CA and roll the members onto theirs, keeping their data disks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			stamp := render.Stamp(time.Now())
			var retired []string
			f.prepare = func(dir outdir.Layout) error {
				c, _, err := f.spec.load(cmd)
				if err != nil {
					return err
				}
				files := []string{pki.AdminCert, pki.AdminKey, pki.KubeClientCert, pki.KubeClientKey, pki.PrometheusCert, pki.PrometheusKey}
				for _, n := range c.Names() {
					files = append(files, pki.MemberCertFile(n), pki.MemberKeyFile(n))
				}
				var rels []string
				for _, f := range files {
					rels = append(rels, filepath.Join("pki", f))
				}
				moved, err := render.MoveToRetired(dir, stamp, rels)
				retired = moved
				return err
			}
			n, took, err := f.roll(cmd, true)
			if err != nil {
				return err
			}
			c, _, err := f.spec.load(cmd)
			if err != nil {
				return err
			}
			dir := outdir.Layout(f.spec.out)
			clients, err := reissueClients(c, dir, stamp)
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "rotated  %d member certificates and every other one in pki/ and kubernetes/ (admin, Kubernetes API server, scraper), same CA; every member rolled onto its new one in %.1fs, data disks kept\n", n, took.Seconds())
			if len(clients) > 0 {
				fmt.Fprintf(w, "clients  reissued %s in %s: hand each client its new pair (the old ones stay valid until they expire, as the CA is the same)\n", strings.Join(clients, ", "), filepath.Join(dir.Dir(), clientsDir))
			}
			fmt.Fprintf(w, "retired  %d old certificate and key files moved under %s\n", len(retired), render.RetiredPath(dir, stamp))
			return nil
		},
	}
	f.register(c)
	return c
}
