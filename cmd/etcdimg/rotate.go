package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/pki"
)

func rotateCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "rotate",
		Short: "Reissue certificates and roll them out",
	}
	c.AddCommand(rotateCertsCmd(a), rotateCACmd(a))
	return c
}

// rotateCertsCmd reissues every member's certificate and the admin's (the
// CA is kept), rebuilds the images and rolls them out keeping every data
// disk, then reissues the application clients' certificates. The old
// certificates and keys are moved to OUT/retired/<time>/.
func rotateCertsCmd(a *app) *cobra.Command {
	f := lifecycleFlags{spec: specFlags{app: a}}
	c := &cobra.Command{
		Use:   "certs",
		Short: "Reissue every member, admin and client certificate under the same CA and roll the members onto theirs, keeping their data disks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			stamp := render.Stamp(time.Now())
			var retired []string
			f.prepare = func(dir outdir.Layout) error {
				c, err := f.spec.cluster(cmd)
				if err != nil {
					return err
				}
				moved, err := render.RetireLeaves(c, dir, stamp)
				retired = moved
				return err
			}
			n, took, err := f.roll(cmd, true)
			if err != nil {
				return err
			}
			c, err := f.spec.cluster(cmd)
			if err != nil {
				return err
			}
			dir := a.dir()
			clients, err := render.ReissueClients(c, dir, stamp)
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
func rotateCACmd(a *app) *cobra.Command {
	f := lifecycleFlags{spec: specFlags{app: a}}
	c := &cobra.Command{
		Use:   "ca",
		Short: "Replace the CA in three phases (trust old+new, switch to the new, drop the old), each rolled out with the data disks kept; run it once per phase",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			c, err := f.spec.cluster(cmd)
			if err != nil {
				return err
			}
			dir := a.dir()
			s, err := render.NextRotationStep(dir)
			if err != nil {
				return err
			}
			stamp, phase := render.Stamp(time.Now()), s.Phase
			if phase == "" {
				return finishRotation(w, dir, stamp)
			}
			if s.Expired {
				fmt.Fprintf(w, "the old CA expired before the trust phase was rolled out: switching to the new CA now\n")
			}
			if s.Resume {
				fmt.Fprintf(w, "resuming the %s phase: its files are written; rolling the members onto them again\n", phase)
			}
			f.prepare = func(dir outdir.Layout) error { return s.Write(c, dir, stamp) }
			n, took, err := f.roll(cmd, true)
			if err != nil {
				return fmt.Errorf("rotate ca, %s phase: %w; run `etcdimg rotate ca` again to resume it", phase, err)
			}
			if err := render.MarkRotationRolled(dir); err != nil {
				return err
			}
			fmt.Fprintf(w, "rolled   %d members onto the %s phase in %.1fs, data disks kept\n", n, phase, took.Seconds())
			ca := dir.PKIFile(pki.CACertFile)
			switch phase {
			case pki.PhaseTrust:
				fmt.Fprintf(w, "phase 1 of 3 (trust) done: every member trusts the old CA and the new one (%s holds both); every certificate is still the old CA's\n", ca)
				fmt.Fprintf(w, "next     give every external client %s as its trusted CA (it verifies the members' new certificates with it after the next phase), then run `etcdimg rotate ca` again\n", ca)
			case pki.PhaseSwitch:
				clients, err := render.ReissueClients(c, dir, stamp)
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

// finishRotation moves the finished rotation's record under retired/.
func finishRotation(w io.Writer, dir outdir.Layout, stamp string) error {
	if err := render.FinishRotation(dir, stamp); err != nil {
		return err
	}
	fmt.Fprintf(w, "rotation complete: the old CA's certificate, key and the certificates it signed are under %s; `etcdimg rotate ca` starts a new rotation\n", filepath.Join(dir.Dir(), render.RetiredDir))
	return nil
}
