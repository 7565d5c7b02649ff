package main

import (
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/etcdserverpb"

	"etcdimg/cluster"
)

// TestMaintenanceCommandsTakeTheirFlags: alarms and defrag take their
// flags and names and go on to the output directory (missing here);
// alarms takes no names.
func TestMaintenanceCommandsTakeTheirFlags(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		usage bool
	}{
		{args: []string{"alarms"}},
		{args: []string{"alarms", "--disarm"}},
		{args: []string{"defrag"}},
		{args: []string{"defrag", "etcd-1", "etcd-3", "--compact", "--timeout", "1m"}},
		{args: []string{"alarms", "etcd-1"}, usage: true},
		{args: []string{"defrag", "--timeout", "soon"}, usage: true},
	} {
		root := &cobra.Command{Use: "etcdimg", SilenceUsage: true, SilenceErrors: true}
		var a app
		a.register(root)
		root.AddCommand(alarmsCmd(&a), defragCmd(&a))
		root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		root.SetArgs(append(tc.args, "--out", filepath.Join(t.TempDir(), "none")))
		err := root.Execute()
		var ue usageError
		if tc.usage {
			if err == nil || (!errors.As(err, &ue) && !strings.Contains(err.Error(), "unknown command") && !strings.Contains(err.Error(), "accepts 0 arg")) {
				t.Errorf("%v: %v, want a usage error", tc.args, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "has no etcdimg.yaml") {
			t.Errorf("%v: %v, want it past the flags to the missing output directory", tc.args, err)
		}
	}
}

// TestAlarmTableNamesEachMembersAlarms: each member's row carries its
// alarms and its database's size, in use and quota; a member that does
// not answer says so; an alarm of a member no longer listed has a row.
func TestAlarmTableNamesEachMembersAlarms(t *testing.T) {
	sts := []cluster.MemberStatus{
		{Name: "etcd-1", DBSize: 3 << 20, DBSizeInUse: 1 << 20, DBQuota: 474 << 20},
		{Name: "etcd-2", DBSize: 474 << 20, DBSizeInUse: 470 << 20, DBQuota: 474 << 20},
		{Name: "etcd-3", Err: errors.New("no answer")},
	}
	alarms := []cluster.Alarm{
		{Member: "etcd-2", ID: 2, Type: etcdserverpb.AlarmType_NOSPACE, Listed: true},
		{Member: "8e9e05c52164694d", ID: 9, Type: etcdserverpb.AlarmType_CORRUPT},
	}
	var b strings.Builder
	alarmTable(&b, sts, alarms)
	for _, row := range [][]string{
		{"MEMBER", "ALARMS", "DATABASE", "IN USE", "QUOTA"},
		{"etcd-1", "-", "3.0 MiB", "1.0 MiB", "474.0 MiB"},
		{"etcd-2", "NOSPACE", "474.0 MiB", "470.0 MiB", "474.0 MiB"},
		{"etcd-3", "-", "no answer"},
		{"8e9e05c52164694d (not a member)", "CORRUPT"},
	} {
		found := false
		for _, line := range strings.Split(b.String(), "\n") {
			ok := true
			for _, cell := range row {
				ok = ok && strings.Contains(line, " "+cell+" ")
			}
			found = found || ok
		}
		if !found {
			t.Errorf("no row with %q:\n%s", row, b.String())
		}
	}
}
