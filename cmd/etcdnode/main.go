// Command etcdnode is the one binary inside the appliance image, dispatched
// on the name it is run as: etcd, etcdctl and etcdutl run etcd's own entry
// points at the version pinned in go.mod, and /init will run firstboot.
// One binary instead of three saves the ~30 MB the three would duplicate.
//
// "etcdnode NAME ARGS…" runs NAME too, so it can be used without links.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/etcdctl/v3/ctlv3"
	"go.etcd.io/etcd/etcdutl/v3/etcdutl"
	"go.etcd.io/etcd/pkg/v3/cobrautl"
	"go.etcd.io/etcd/server/v3/etcdmain"

	"etcdimg/firstboot"
	"etcdimg/firstboot/backupd"
)

var programs = map[string]func(args []string){
	"init":    func([]string) { firstboot.Main() },
	"etcd":    etcdmain.Main,
	"etcdctl": func(args []string) { os.Args = args; ctlv3.MustStart() },
	"etcdutl": runEtcdutl,
	// etcd-backup is the backup service (layout.BackupBinary).
	"etcd-backup": func([]string) { backupd.Main() },
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args
	if _, ok := programs[name]; !ok && len(os.Args) > 1 {
		name, args = os.Args[1], os.Args[1:]
	}
	run, ok := programs[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "etcdnode: run me as init, etcd, etcdctl, etcdutl or etcd-backup (a link or the first argument), not %q\n", name)
		os.Exit(2)
	}
	run(args)
}

// runEtcdutl is etcdutl's main, which lives in a main package and so
// cannot be imported: the same commands and flags, from package etcdutl.
func runEtcdutl(args []string) {
	root := &cobra.Command{Use: "etcdutl", Short: "An administrative command line tool for etcd3."}
	root.PersistentFlags().DurationVar(&etcdutl.FlockTimeout, "timeout", 10*time.Second, "time to wait to obtain a file lock on db file, 0 to block indefinitely")
	root.PersistentFlags().StringVarP(&etcdutl.OutputFormat, "write-out", "w", "simple", "set the output format (fields, json, protobuf, simple, table)")
	root.AddCommand(
		etcdutl.NewDefragCommand(),
		etcdutl.NewSnapshotCommand(),
		etcdutl.NewHashKVCommand(),
		etcdutl.NewVersionCommand(),
		etcdutl.NewCompletionCommand(),
		etcdutl.NewMigrateCommand(),
	)
	root.SetHelpTemplate(`{{.UsageString}}`)
	root.SetArgs(args[1:])
	if err := root.Execute(); err != nil {
		cobrautl.ExitWithError(cobrautl.ExitError, err)
	}
}
