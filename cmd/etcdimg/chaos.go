package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/chaos"
	"etcdimg/cluster"
	"etcdimg/outdir"
)

// chaosFaults are the faults chaos runs inject today; replace and roll
// are scheduled by package chaos but not wired into runs yet.
var chaosFaults = []string{chaos.Kill, chaos.PowerOff, chaos.PowerCut, chaos.Partition}

func chaosCmd() *cobra.Command {
	var out, faults string
	var duration time.Duration
	var clients, keys int
	var seed uint64
	c := &cobra.Command{
		Use:   "chaos",
		Short: "Check the running cluster's linearizability and durability under traffic while members are killed, powered off and partitioned",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kinds := strings.Split(faults, ",")
			for _, k := range kinds {
				if k, _, _ = strings.Cut(k, ":"); slices.Contains(chaos.Kinds, k) && !slices.Contains(chaosFaults, k) {
					return fmt.Errorf("--faults: %s is not part of chaos runs yet; the faults are %s", k, strings.Join(chaosFaults, ","))
				}
			}
			dir := outdir.Layout(out)
			e, err := builtEtcd(out)
			if err != nil {
				return err
			}
			st, lock, err := localCluster(dir)
			if errors.Is(err, cluster.ErrNotRunning) {
				return fmt.Errorf("chaos: no cluster is running in %s; chaos runs against a cluster under `etcdimg up --out %s --detach`, whose machines and LAN it controls", out, out)
			}
			if err != nil {
				return err
			}
			defer lock.Unlock()
			if n := len(st.Running()); n != len(st.Members) {
				return fmt.Errorf("chaos: %d of %d members are running; start the others (`etcdimg start NAME`) first", n, len(st.Members))
			}
			if !cmd.Flags().Changed("seed") {
				seed = uint64(time.Now().UnixNano()) % 1_000_000
			}
			var names []string
			for _, m := range st.Members {
				names = append(names, m.Name)
			}
			plan, err := chaos.Schedule(kinds, names, duration, seed)
			if err != nil {
				return err
			}
			files := filepath.Join(out, "chaos", time.Now().UTC().Format("20060102-150405"))
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "chaos: %s of traffic from %d clients over %d keys, seed %d (the same --seed gives the same faults); files in %s\n", duration, clients, keys, seed, files)
			for _, f := range plan {
				fmt.Fprintf(w, "  planned: %s\n", f)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			v, done, err := chaos.Run(ctx, st, e, chaos.Options{
				Duration: duration, Plan: plan, Clients: clients, Keys: keys, Seed: seed, Dir: files, Log: w,
			})
			if err != nil {
				return err
			}
			report, err := os.Create(filepath.Join(files, "report.txt"))
			if err != nil {
				return err
			}
			chaos.Print(io.MultiWriter(w, report), v, done)
			if err := report.Close(); err != nil {
				return err
			}
			if !v.Passed() {
				return fmt.Errorf("chaos: a check failed; the history, its visualization (history.html) and the consoles are in %s", files)
			}
			return nil
		},
	}
	outFlag(c, &out)
	c.Flags().DurationVar(&duration, "duration", 2*time.Minute, "how long traffic runs; the faults share it after a 10 s warm-up, and 20 s are left after the last")
	c.Flags().StringVar(&faults, "faults", strings.Join(chaosFaults, ","), "faults to inject, comma-separated: "+strings.Join(chaosFaults, ",")+"; kill:leader, kill:follower, partition:isolate, partition:split (the leader in the minority) or partition:lossy (30 % of a member's frames lost) choose a variant")
	c.Flags().IntVar(&clients, "clients", 8, "concurrent clients, spread over the members' endpoints")
	c.Flags().IntVar(&keys, "keys", 10, "size of the key space the clients share")
	c.Flags().Uint64Var(&seed, "seed", 0, "seed of the fault schedule and the clients' choices (default: drawn and printed)")
	return c
}
