package ignition

import (
	"flag"
	"testing"

	"go.etcd.io/etcd/pkg/v3/featuregate"
	"go.etcd.io/etcd/pkg/v3/flags"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/features"
	"go.uber.org/zap"

	"etcdimg/ignition/ign"
	"etcdimg/internal/etcdtest"
	"etcdimg/internal/spec"
)

// TestEtcdStartsWithTheCorruptionChecksOn: the member's etcd.conf, read
// the way the member's etcd reads it (etcdmain: the environment onto
// embed.Config's flags, by etcd's own flags.SetFlagsFromEnv), starts a
// real etcd v3.7 with its initial and compaction hash checks on; etcd's
// defaults, without the line, have both off.
func TestEtcdStartsWithTheCorruptionChecksOn(t *testing.T) {
	c := spec.Default(3)
	env, err := ign.EnvMap(EtcdConf(c, c.Members[0], c.Name, 0))
	if err != nil {
		t.Fatal(err)
	}
	gates, ok := env["ETCD_FEATURE_GATES"]
	if !ok {
		t.Fatal("etcd.conf sets no ETCD_FEATURE_GATES")
	}
	for _, tc := range []struct {
		name  string
		gates string // ETCD_FEATURE_GATES; "" for etcd's defaults
		on    bool
	}{
		{"etcd's defaults", "", false},
		{"the rendered etcd.conf", gates, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.gates != "" {
				t.Setenv("ETCD_FEATURE_GATES", tc.gates)
			}
			srv, _ := etcdtest.Start(t, func(cfg *embed.Config) {
				fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
				cfg.AddFlags(fs)
				if err := flags.SetFlagsFromEnv(zap.NewNop(), "ETCD", fs); err != nil {
					t.Fatalf("ETCD_FEATURE_GATES=%q: %v", tc.gates, err)
				}
			})
			for _, f := range []featuregate.Feature{features.InitialCorruptCheck, features.CompactHashCheck} {
				if got := srv.Server.FeatureEnabled(f); got != tc.on {
					t.Errorf("the running etcd has %s = %v, want %v", f, got, tc.on)
				}
			}
		})
	}
}
