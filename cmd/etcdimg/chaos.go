package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/cluster"
	"etcdimg/internal/outdir"
	"etcdimg/testvm/chaos"
	"etcdimg/testvm/local"
)

func chaosCmd(a *app) *cobra.Command {
	sf := specFlags{app: a}
	var bf bootFlags
	var faults string
	var o chaos.Options
	c := &cobra.Command{
		Use:   "chaos",
		Short: "Check the running cluster's linearizability and durability under traffic while members are killed, powered off and partitioned",
		Args:  cobra.NoArgs,
		RunE: a.onEtcd(func(cmd *cobra.Command, _ []string, b *built, e *cluster.Etcd) error {
			kinds := strings.Split(faults, ",")
			out := a.out
			st, lock, err := local.Open(b.dir)
			if errors.Is(err, local.ErrNotRunning) {
				return fmt.Errorf("chaos: no cluster is running in %s; chaos runs against a cluster under `etcdimg up --out %s --detach`, whose machines and LAN it controls", out, out)
			}
			if err != nil {
				return err
			}
			defer lock.Unlock()
			if !cmd.Flags().Changed("seed") {
				o.Seed = uint64(time.Now().UnixNano()) % 1_000_000
			}
			plan, err := chaos.Plan(st, kinds, o.Duration, o.Seed)
			if err != nil {
				return err
			}
			// replace and roll boot images made from the current spec
			// and PKI, as the commands do; built before any fault.
			if chaos.NeedsImages(plan) {
				if o.Images, err = buildImages(cmd, &sf, &bf, nil, nil); err != nil {
					return err
				}
			}
			o.Plan, o.Dir = plan, filepath.Join(out, outdir.ChaosDir, time.Now().UTC().Format("20060102-150405"))
			// upgrade sends images of a changed spec (good) and another
			// cluster's (foreign), each built in a directory of the run's
			// with this directory's PKI and image-signing key.
			if chaos.NeedsUpgradeImages(plan) {
				good, foreign, err := chaos.UpgradeDirs(b.c, b.dir, o.Dir, o.Seed)
				if err != nil {
					return err
				}
				o.UpgradeImages = map[string]map[string]string{}
				for variant, d := range map[string]outdir.Layout{chaos.GoodUpgrade: good, chaos.ForeignUpgrade: foreign} {
					alt := specFlags{app: &app{out: d.Dir()}}
					o.UpgradeImages[variant], err = buildImages(cmd, &alt, &bf, nil, nil)
					// The copies of the signing keys go once the images are
					// built; the directory's own stay where they are.
					if rerr := chaos.DropSigningKeys(d); err == nil {
						err = rerr
					}
					if err != nil {
						return fmt.Errorf("chaos: the %s upgrade's images: %w", variant, err)
					}
				}
				if o.NodeAPI, err = cluster.AdminNodeAPI(b.c, b.dir, local.Reach(b.dir)); err != nil {
					return err
				}
				o.Trial = time.Duration(b.c.Upgrade.Tries)*b.c.Upgrade.TrialTimeout.D() + 2*time.Minute
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "chaos: %s of traffic from %d clients over %d keys, seed %d (the same --seed gives the same faults); files in %s\n", o.Duration, o.Clients, o.Keys, o.Seed, o.Dir)
			for _, f := range plan {
				fmt.Fprintf(w, "  planned: %s\n", f)
			}
			ctx, stop := interruptible()
			defer stop()
			o.Log = w
			v, done, err := chaos.Run(ctx, st, e, o)
			if err != nil {
				return err
			}
			return chaos.Report(w, o.Dir, v, done)
		}),
	}
	sf.register(c)
	bf.register(c)
	c.Flags().DurationVar(&o.Duration, "duration", 2*time.Minute, "how long traffic runs; the faults share it after a 10 s warm-up, and 20 s are left after the last")
	c.Flags().StringVar(&faults, "faults", strings.Join(chaos.Kinds, ","), "faults to inject, comma-separated: "+strings.Join(chaos.Kinds, ",")+
		"; a variant is chosen by kill:leader, kill:follower, partition:isolate, partition:split (the leader in the minority), partition:lossy (30 % of a member's frames lost), replace:blank, replace:keep (the data disk kept), roll:blank, roll:keep, upgrade:good (every member onto images of a changed spec, over the network) or upgrade:foreign (one member sent another cluster's image, which it must refuse); else the seed chooses")
	c.Flags().IntVar(&o.Clients, "clients", 8, "concurrent clients, spread over the members' endpoints")
	c.Flags().IntVar(&o.Keys, "keys", 10, "size of the key space the clients share")
	c.Flags().Uint64Var(&o.Seed, "seed", 0, "seed of the fault schedule and the clients' choices (default: drawn and printed)")
	return c
}
