package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
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
// CA is kept), rebuilds the images and installs them on the members over
// their node APIs (upgrade: each reboots into a new slot, its data disk
// untouched), then reissues the application clients' certificates. The old
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
			n, took, err := f.upgrade(cmd, func(c *spec.Cluster, dir outdir.Layout) error {
				moved, err := render.RetireLeaves(c, dir, stamp)
				retired = moved
				return err
			})
			if err != nil {
				return err
			}
			c, err := f.spec.cluster(cmd)
			if err != nil {
				return err
			}
			return render.CertsRotated(w, c, a.dir(), stamp, n, took, len(retired))
		},
	}
	f.registerUpgrade(c)
	return c
}

// rotateCACmd runs the next phase of a CA rotation (pki.Rotation): it
// changes the PKI for that phase, upgrades every member onto it (a new
// slot each, the data disk untouched), and says what external clients
// need before the next one. A phase whose upgrade did not finish is
// resumed by the next run: members already on their slot are skipped.
func rotateCACmd(a *app) *cobra.Command {
	f := lifecycleFlags{spec: specFlags{app: a}}
	c := &cobra.Command{
		Use:   "ca",
		Short: "Replace the CA in three phases (trust old+new, switch to the new, drop the old), each rolled out with the data disks kept; run it once per phase",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			if err := f.checkPlatform(); err != nil {
				return err
			}
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
				return render.RotationFinished(w, dir, stamp)
			}
			s.Opening(w)
			n, took, err := f.upgrade(cmd, func(c *spec.Cluster, dir outdir.Layout) error { return s.Write(c, dir, stamp) })
			if err != nil {
				return fmt.Errorf("rotate ca, %s phase: %w; run `etcdimg rotate ca` again to resume it", phase, err)
			}
			return s.Rolled(w, c, dir, stamp, n, took)
		},
	}
	f.registerUpgrade(c)
	return c
}
