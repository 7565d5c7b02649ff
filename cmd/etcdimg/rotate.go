package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

func rotateCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "rotate",
		Short: "Reissue certificates and roll them out",
	}
	c.AddCommand(rotateCertsCmd(), rotateCACmd())
	return c
}

// leafFiles are the certificates and keys the CA signed for the cluster
// itself (members, admin, Kubernetes API server, scraper), relative to
// the output directory: what a reissue moves under retired/ first.
func leafFiles(c *spec.Cluster) []string {
	files := []string{pki.AdminCert, pki.AdminKey, pki.KubeClientCert, pki.KubeClientKey, pki.PrometheusCert, pki.PrometheusKey}
	for _, n := range c.Names() {
		files = append(files, pki.MemberCertFile(n), pki.MemberKeyFile(n))
	}
	var rels []string
	for _, f := range files {
		rels = append(rels, filepath.Join("pki", f))
	}
	return rels
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
				moved, err := render.MoveToRetired(dir, stamp, leafFiles(c))
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
				fmt.Fprintf(w, "clients  reissued %s in %s: hand each client its new pair (the old ones stay valid until they expire, as the CA is the same)\n", strings.Join(clients, ", "), dir.Clients())
			}
			fmt.Fprintf(w, "retired  %d old certificate and key files moved under %s\n", len(retired), render.RetiredPath(dir, stamp))
			return nil
		},
	}
	f.register(c)
	return c
}

// rotateCACmd runs the next phase of a CA rotation (pki.Rotation): it
// changes the PKI for that phase, rolls every member onto it keeping its
// data disk, and says what external clients need before the next one. A
// phase whose roll did not finish is rolled again by the next run.
func rotateCACmd() *cobra.Command {
	var f lifecycleFlags
	c := &cobra.Command{
		Use:   "ca",
		Short: "Replace the CA in three phases (trust old+new, switch to the new, drop the old), each rolled out with the data disks kept; run it once per phase",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			c, _, err := f.spec.load(cmd)
			if err != nil {
				return err
			}
			dir := outdir.Layout(f.spec.out)
			r, err := pki.LoadRotation(dir.PKI())
			if err != nil {
				return err
			}
			stamp := render.Stamp(time.Now())
			phase, resume := pki.PhaseTrust, false
			switch {
			case r == nil:
			case !r.Rolled:
				phase, resume = r.Phase, true
			case r.Phase == pki.PhaseTrust:
				phase = pki.PhaseSwitch
			case r.Phase == pki.PhaseSwitch:
				phase = pki.PhaseDrop
			default:
				phase = ""
			}
			if phase == "" {
				return finishRotation(w, dir, stamp)
			}
			// A trust phase cut short by the old CA's expiry has nothing
			// left to roll: no certificate of the old CA is accepted any
			// more. Switching to the new CA is the way on.
			if phase == pki.PhaseTrust && resume {
				if expired, err := pki.CAExpired(dir.PKI()); err != nil {
					return err
				} else if expired {
					fmt.Fprintf(w, "the old CA expired before the trust phase was rolled out: switching to the new CA now\n")
					phase, resume = pki.PhaseSwitch, false
				}
			}
			if resume {
				fmt.Fprintf(w, "resuming the %s phase: its files are written; rolling the members onto them again\n", phase)
			}
			f.prepare = func(dir outdir.Layout) error {
				if resume {
					return nil
				}
				return writeRotationPhase(c, dir, phase, r, stamp)
			}
			n, took, err := f.roll(cmd, true)
			if err != nil {
				return fmt.Errorf("rotate ca, %s phase: %w; run `etcdimg rotate ca` again to resume it", phase, err)
			}
			if r, err = pki.LoadRotation(dir.PKI()); err != nil || r == nil {
				return fmt.Errorf("rotate ca: the rotation record is gone after the roll: %v", err)
			}
			r.Rolled = true
			if _, err := outdir.Write(dir.PKI(), []outdir.File{fileOf(r.File())}); err != nil {
				return err
			}
			fmt.Fprintf(w, "rolled   %d members onto the %s phase in %.1fs, data disks kept\n", n, phase, took.Seconds())
			ca := dir.PKIFile(pki.CACertFile)
			switch phase {
			case pki.PhaseTrust:
				fmt.Fprintf(w, "phase 1 of 3 (trust) done: every member trusts the old CA and the new one (%s holds both); every certificate is still the old CA's\n", ca)
				fmt.Fprintf(w, "next     give every external client %s as its trusted CA (it verifies the members' new certificates with it after the next phase), then run `etcdimg rotate ca` again\n", ca)
			case pki.PhaseSwitch:
				clients, err := reissueClients(c, dir, stamp)
				if err != nil {
					return err
				}
				fmt.Fprintf(w, "phase 2 of 3 (switch) done: the new CA signs; every member, the admin, the Kubernetes API server (%s) and the clients (%s) have new certificates; the old CA's are still accepted\n", filepath.Join(dir.Dir(), render.KubeDir), strings.Join(clients, ", "))
				fmt.Fprintf(w, "next     hand every external client its new pair (and the Kubernetes API server the files in %s), then run `etcdimg rotate ca` again: certificates of the old CA are refused after it\n", filepath.Join(dir.Dir(), render.KubeDir))
			case pki.PhaseDrop:
				fmt.Fprintf(w, "phase 3 of 3 (drop) done: only the new CA is trusted; a certificate of the old one is refused on every port\n")
				return finishRotation(w, dir, stamp)
			}
			return nil
		},
	}
	f.register(c)
	return c
}

// writeRotationPhase changes the PKI for phase: the old CA's key (switch)
// and every certificate it signed (switch) go under retired/ first, then
// the phase's files and its record are written in one commit.
func writeRotationPhase(c *spec.Cluster, dir outdir.Layout, phase string, r *pki.Rotation, stamp string) error {
	var files []pki.File
	var err error
	switch phase {
	case pki.PhaseTrust:
		files, err = pki.RotateTrust(c, dir.PKI())
	case pki.PhaseSwitch:
		if files, err = pki.RotateSwitch(dir.PKI(), *r); err != nil {
			return err
		}
		// The old CA's key is copied aside before the commit replaces
		// it, so that no moment leaves the directory without a CA key.
		key, err := os.ReadFile(dir.PKIFile(pki.CAKeyFile))
		if err != nil {
			return err
		}
		cert, err := os.ReadFile(dir.PKIFile(pki.CACertFile))
		if err != nil {
			return err
		}
		if _, err := outdir.Write(filepath.Join(render.RetiredPath(dir, stamp), "pki", "old-ca"), []outdir.File{
			{Path: pki.CACertFile, Data: cert, Mode: 0o644}, {Path: pki.CAKeyFile, Data: key, Mode: 0o600},
		}); err != nil {
			return err
		}
		if _, err := render.MoveToRetired(dir, stamp, leafFiles(c)); err != nil {
			return err
		}
	case pki.PhaseDrop:
		files, err = pki.RotateDrop(dir.PKI(), *r)
	}
	if err != nil {
		return err
	}
	var out []outdir.File
	for _, f := range files {
		out = append(out, fileOf(f))
	}
	if _, err := outdir.Write(dir.PKI(), out); err != nil {
		return err
	}
	if phase == pki.PhaseSwitch {
		// The new CA now lives in etcd-ca-key.pem and first in
		// etcd-ca.pem: next/ is a second copy of its key, removed once
		// the live one is checked to be the same bytes.
		next := filepath.Join(dir.PKI(), pki.NextDir)
		live, _ := os.ReadFile(dir.PKIFile(pki.CAKeyFile))
		if staged, err := os.ReadFile(filepath.Join(next, pki.CAKeyFile)); err == nil && bytes.Equal(staged, live) {
			os.Remove(filepath.Join(next, pki.CAKeyFile))
			os.Remove(filepath.Join(next, pki.CACertFile))
			os.Remove(next)
		}
	}
	return nil
}

// finishRotation moves the finished rotation's record under retired/.
func finishRotation(w io.Writer, dir outdir.Layout, stamp string) error {
	if _, err := render.MoveToRetired(dir, stamp, []string{filepath.Join("pki", pki.RotationFile)}); err != nil {
		return err
	}
	os.Remove(filepath.Join(dir.PKI(), pki.NextDir))
	fmt.Fprintf(w, "rotation complete: the old CA's certificate, key and the certificates it signed are under %s; `etcdimg rotate ca` starts a new rotation\n", filepath.Join(dir.Dir(), render.RetiredDir))
	return nil
}

func fileOf(f pki.File) outdir.File { return outdir.File{Path: f.Name, Data: f.Data, Mode: f.Mode} }
