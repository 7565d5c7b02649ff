package main

import (
	"fmt"
	"os"
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
			stamp := time.Now().UTC().Format("20060102T150405")
			var retired []string
			f.prepare = func(dir outdir.Layout) error {
				c, _, err := f.spec.load(cmd)
				if err != nil {
					return err
				}
				files := []string{pki.AdminCert, pki.AdminKey}
				for _, n := range c.Names() {
					files = append(files, pki.MemberCertFile(n), pki.MemberKeyFile(n))
				}
				moved, err := moveAside(dir, stamp, "pki", files)
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
			fmt.Fprintf(w, "rotated  %d member certificates and the admin's, same CA; every member rolled onto its new one in %.1fs, data disks kept\n", n, took.Seconds())
			if len(clients) > 0 {
				fmt.Fprintf(w, "clients  reissued %s in %s: hand each client its new pair (the old ones stay valid until they expire, as the CA is the same)\n", strings.Join(clients, ", "), filepath.Join(dir.Dir(), clientsDir))
			}
			fmt.Fprintf(w, "retired  %d old certificate and key files moved under %s\n", len(retired), filepath.Join(dir.Dir(), render.RetiredDir, stamp))
			return nil
		},
	}
	f.register(c)
	return c
}

// moveAside moves the named files of dir/sub into dir/retired/stamp/sub.
func moveAside(dir outdir.Layout, stamp, sub string, names []string) ([]string, error) {
	dest := filepath.Join(dir.Dir(), render.RetiredDir, stamp, sub)
	var moved []string
	for _, n := range names {
		from := filepath.Join(dir.Dir(), sub, n)
		if _, err := os.Stat(from); err != nil {
			continue
		}
		if err := os.MkdirAll(dest, 0o700); err != nil {
			return moved, err
		}
		os.Chmod(filepath.Join(dir.Dir(), render.RetiredDir), 0o700)
		if err := os.Rename(from, filepath.Join(dest, n)); err != nil {
			return moved, err
		}
		moved = append(moved, filepath.Join(dest, n))
	}
	return moved, nil
}
