package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/olekukonko/tablewriter"
	"github.com/spf13/cobra"

	"etcdimg/cluster"
)

func alarmsCmd(a *app) *cobra.Command {
	var disarm bool
	c := &cobra.Command{
		Use:   "alarms [--disarm]",
		Short: "List the cluster's active alarms by member, with each member's database size and quota; --disarm disarms them once their cause is gone",
		Args:  cobra.NoArgs,
		RunE: a.onEtcd(func(cmd *cobra.Command, _ []string, _ *built, e *cluster.Etcd) error {
			out := cmd.OutOrStdout()
			if disarm {
				done, err := e.Disarm(cmd.Context())
				if err != nil {
					return err
				}
				if len(done) == 0 {
					fmt.Fprintln(out, "no active alarms: nothing to disarm")
				}
				for _, al := range done {
					fmt.Fprintf(out, "disarmed %s\n", al)
				}
				return nil
			}
			alarms, err := e.Alarms(cmd.Context())
			if err != nil {
				return fmt.Errorf("alarms: %w", err)
			}
			alarmTable(out, e.Statuses(cmd.Context(), 5*time.Second), alarms)
			if len(alarms) == 0 {
				fmt.Fprintln(out, "no active alarms")
			}
			for _, al := range alarms {
				fmt.Fprintf(out, "%s: %s\n", al, al.Remedy())
			}
			return nil
		}),
	}
	c.Flags().BoolVar(&disarm, "disarm", false, fmt.Sprintf("disarm every active alarm, only once its cause is gone (NOSPACE: every member's database under %d%% of its quota; CORRUPT: the member replaced); else nothing is disarmed and the refusal says what to do", cluster.DisarmBelowPercent))
	return c
}

// alarmTable prints every member's alarms beside its database's size, in
// use and quota; alarms of members no longer listed get rows of their own.
func alarmTable(w io.Writer, sts []cluster.MemberStatus, alarms []cluster.Alarm) {
	byMember := map[string][]string{}
	for _, al := range alarms {
		byMember[al.Member] = append(byMember[al.Member], al.Type.String())
	}
	t := tablewriter.NewWriter(w)
	t.Header("MEMBER", "ALARMS", "DATABASE", "IN USE", "QUOTA")
	for _, st := range sts {
		names := "-"
		if n := byMember[st.Name]; len(n) > 0 {
			names = strings.Join(n, ",")
		}
		delete(byMember, st.Name)
		if st.Err != nil {
			t.Append(st.Name, names, "no answer", "", "")
			continue
		}
		t.Append(st.Name, names, cluster.HumanSize(st.DBSize), cluster.HumanSize(st.DBSizeInUse), cluster.HumanSize(st.DBQuota))
	}
	for _, al := range alarms {
		if n, ok := byMember[al.Member]; ok {
			t.Append(al.Member+" (not a member)", strings.Join(n, ","), "", "", "")
			delete(byMember, al.Member)
		}
	}
	t.Render()
}

func defragCmd(a *app) *cobra.Command {
	var o cluster.DefragOptions
	c := &cobra.Command{
		Use:   "defrag [NAME...]",
		Short: "Defragment every member (or those named) one at a time, health-checked, followers first and the leader last after its leadership moved, under the cluster's operation lock",
		RunE: a.onEtcd(func(cmd *cobra.Command, args []string, b *built, e *cluster.Etcd) error {
			out := cmd.OutOrStdout()
			o.Only = args
			o.MembersRecover = b.c.Maintenance.Check > 0
			o.Say = func(step string, took time.Duration) { fmt.Fprintf(out, "%-100s %6.1fs\n", step, took.Seconds()) }
			ctx, stop := interruptible()
			defer stop()
			done, err := e.Defragment(ctx, o)
			var reclaimed int64
			for _, r := range done {
				reclaimed += r.Reclaimed()
			}
			if len(done) > 0 {
				fmt.Fprintf(out, "%d member(s) defragmented, %s reclaimed in all\n", len(done), cluster.HumanSize(reclaimed))
			}
			return err
		}),
	}
	c.Flags().BoolVar(&o.Compact, "compact", false, "first compact the history to the current revision (etcd's NOSPACE procedure: deleted keys and old revisions give their space back only then; a watcher resuming from an older revision must read again)")
	c.Flags().DurationVar(&o.Timeout, "timeout", 10*time.Minute, "how long one member's defragmentation may take (it rewrites the database file and serves nothing meanwhile)")
	return c
}
