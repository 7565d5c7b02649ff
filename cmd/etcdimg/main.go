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
		Long: `etcdimg turns a cluster spec (etcdimg.yaml) into a CA, a certificate per
member and one Ignition config per member; later steps make bootable images
of them.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var a app
	a.register(root)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(initCmd(), clientCmd(), rotateCmd(), renderCmd(), buildCmd(), upCmd(), downCmd(), statusCmd(), healthCmd(), etcdctlCmd(),
		stopCmd(), startCmd(), replaceCmd(), rollCmd(), snapshotCmd(), backupsCmd(), restoreCmd(), chaosCmd(), lanCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "etcdimg: %v\n", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
