// Command etcdimg builds immutable, bootable etcd node images from a short
// cluster spec. It only parses flags and prints; the work is in the
// packages.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// usageError marks a command-line mistake (exit 2) as opposed to a failed
// run (exit 1).
type usageError struct{ error }

func main() {
	root := &cobra.Command{
		Use:   "etcdimg",
		Short: "Build immutable, bootable node images that form a TLS-secured etcd cluster",
		Long: `etcdimg turns a short cluster spec (etcdimg.yaml) into an output directory
(a CA and a certificate per member, one Ignition config per member) and
immutable, bootable disk images: one per member, or one cloud image for every
instance. Each member forms or joins the cluster on its own at boot, with
mTLS and etcd's authentication on, and backs it up to its data disk and S3.

Build makes and remakes the directory and images; Run locally boots them in
QEMU on one virtual LAN; Operate reaches any deployment with the admin
certificate (health, snapshots, backups, replacing and rolling members); Test
checks a local cluster under faults.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// Each group lists its verbs in the order an operator meets them.
	cobra.EnableCommandSorting = false
	var a app
	a.register(root)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	group := func(id, title string, cmds ...*cobra.Command) {
		root.AddGroup(&cobra.Group{ID: id, Title: title})
		for _, c := range cmds {
			c.GroupID = id
			root.AddCommand(c)
		}
	}
	group("build", "Build:", withoutOut(initCmd()), renderCmd(&a), buildCmd(&a), clientCmd(&a), rotateCmd(&a), restoreCmd(&a))
	group("local", "Run locally (QEMU):", upCmd(&a), downCmd(&a), statusCmd(&a), stopCmd(&a), startCmd(&a), withoutOut(lanCmd()))
	group("operate", "Operate:", healthCmd(&a), etcdctlCmd(&a), alarmsCmd(&a), defragCmd(&a), snapshotCmd(&a), backupsCmd(&a), upgradeCmd(&a), replaceCmd(&a), rollCmd(&a))
	group("test", "Test:", chaosCmd(&a))
	if err := root.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "etcdimg: %v\n", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
