package chaos

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

var three = []string{"etcd-1", "etcd-2", "etcd-3"}

// TestTheSameSeedGivesTheSameSchedule, and another seed another one;
// every fault lies between the warm-up and the cool-down, is healed
// before the next begins, and each kind asked for comes once.
func TestTheSameSeedGivesTheSameSchedule(t *testing.T) {
	a, err := Schedule(Kinds, three, 5*time.Minute, 42)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Schedule(Kinds, three, 5*time.Minute, 42)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("seed 42 twice:\n%v\n%v", a, b)
	}
	differs := false
	for seed := uint64(1); seed < 5 && !differs; seed++ {
		c, _ := Schedule(Kinds, three, 5*time.Minute, seed)
		differs = !reflect.DeepEqual(a, c)
	}
	if !differs {
		t.Error("four other seeds gave the same schedule as 42")
	}
	seen := map[string]bool{}
	for i, f := range a {
		seen[f.Kind] = true
		if f.At < Warmup || f.At+f.For > 5*time.Minute-Cooldown {
			t.Errorf("%v: outside %s … %s", f, Warmup, 5*time.Minute-Cooldown)
		}
		if i > 0 && a[i-1].At+a[i-1].For > f.At {
			t.Errorf("%v begins before %v is healed", f, a[i-1])
		}
	}
	if len(a) != len(Kinds) || len(seen) != len(Kinds) {
		t.Errorf("schedule %v, want each of %v once", a, Kinds)
	}
}

// TestBadSchedulesAreRefused in one line naming the flag and the fix.
func TestBadSchedulesAreRefused(t *testing.T) {
	for _, tc := range []struct {
		kinds    []string
		members  []string
		duration time.Duration
		want     string
	}{
		{[]string{"kill", "meteor"}, three, 5 * time.Minute, `--faults: unknown fault "meteor"; the faults are kill,poweroff,powercut,partition,replace,roll`},
		{Kinds, three, time.Minute, "--duration 1m0s is too short for 7 faults: give at least 1m40s"},
		{[]string{"kill"}, three[:1], 5 * time.Minute, "a fault test needs a cluster of at least 3"},
		{[]string{"kill:everyone"}, three, 5 * time.Minute, `--faults: kill has no variant "everyone"; its variants are leader, follower`},
		{[]string{"roll:fast"}, three, 5 * time.Minute, `--faults: roll has no variant "fast"; its variants are blank, keep`},
	} {
		_, err := Schedule(tc.kinds, tc.members, tc.duration, 1)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v %v %s: %v, want %q", tc.kinds, tc.members, tc.duration, err, tc.want)
		}
	}
}

// TestNamedVariantsAreKept: --faults kill:leader,partition:split plans
// exactly those, whatever the seed; replace names a member, roll none,
// and both are healed when the command returns.
func TestNamedVariantsAreKept(t *testing.T) {
	for seed := uint64(0); seed < 20; seed++ {
		plan, err := Schedule([]string{"kill:leader", "partition:split", "replace:blank", "roll:keep"}, three, 2*time.Minute, seed)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range plan {
			bad := false
			switch f.Kind {
			case Kill:
				bad = f.Variant != "leader"
			case Partition:
				bad = f.Variant != "split" || f.Member != ""
			case Replace:
				bad = f.Variant != Blank || f.Member == "" || f.For != 0
			case Roll:
				bad = f.Variant != Keep || f.Member != "" || f.For != 0
			}
			if bad {
				t.Fatalf("seed %d: %v", seed, f)
			}
		}
	}
}

// TestUpgradeDirsDifferOnlyWhereTheyMust: the good directory's spec moves
// upgrade.goodAfter alone and keeps the cluster's record; the foreign one
// has no record (render gives it a new token); both carry the PKI with
// its modes (keys 0600).
func TestUpgradeDirsDifferOnlyWhereTheyMust(t *testing.T) {
	c := spec.Default(3)
	dir := outdir.Layout(t.TempDir())
	os.MkdirAll(dir.PKI(), 0o700)
	os.WriteFile(dir.PKIFile("image-signing.key"), []byte("key"), 0o600)
	os.WriteFile(dir.PKIFile("etcd-ca.pem"), []byte("ca"), 0o644)
	os.WriteFile(dir.ClusterRecord(), []byte(`{"clusterID":"1"}`), 0o644)
	good, foreign, err := UpgradeDirs(c, dir, t.TempDir(), 7)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []outdir.Layout{good, foreign} {
		st, err := os.Stat(d.PKIFile("image-signing.key"))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: the signing key: %v %v", d, st, err)
		}
	}
	g, err := os.ReadFile(good.Spec())
	if err != nil {
		t.Fatal(err)
	}
	gc, err := spec.Parse(g, "etcdimg.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if gc.Upgrade.GoodAfter == c.Upgrade.GoodAfter || gc.Upgrade.GoodAfter >= gc.Upgrade.TrialTimeout {
		t.Errorf("good: goodAfter %s (was %s)", gc.Upgrade.GoodAfter.D(), c.Upgrade.GoodAfter.D())
	}
	gc.Upgrade = c.Upgrade
	want, _ := spec.Marshal(c)
	got, _ := spec.Marshal(gc)
	if string(got) != string(want) {
		t.Errorf("good: the spec differs beyond upgrade.goodAfter:\n%s\nwant\n%s", got, want)
	}
	if _, err := os.Stat(good.ClusterRecord()); err != nil {
		t.Errorf("good: no cluster record: %v", err)
	}
	if _, err := os.Stat(foreign.ClusterRecord()); err == nil {
		t.Error("foreign: the cluster's record was copied")
	}
}

// TestAnUpgradeIsHealedWhenItsCommandEnds: upgrade faults last as long as
// their command; a foreign image is sent to one member.
func TestAnUpgradeIsHealedWhenItsCommandEnds(t *testing.T) {
	for _, k := range []string{"upgrade:good", "upgrade:foreign"} {
		plan, err := Schedule([]string{k}, []string{"etcd-1", "etcd-2", "etcd-3"}, 2*time.Minute, 1)
		if err != nil {
			t.Fatal(err)
		}
		f := plan[0]
		if f.Kind != Upgrade || f.For != 0 || (f.Variant == ForeignUpgrade) != (f.Member != "") {
			t.Errorf("%s: %+v", k, f)
		}
	}
	if !NeedsUpgradeImages([]Fault{{Kind: Upgrade}}) || NeedsUpgradeImages([]Fault{{Kind: Roll}}) {
		t.Error("NeedsUpgradeImages")
	}
}

// TestTheRunsKeyCopiesGo: once the upgrade images are built, the copies
// of the signing keys leave the run's directory; the rest stays.
func TestTheRunsKeyCopiesGo(t *testing.T) {
	d := outdir.Layout(t.TempDir())
	os.MkdirAll(filepath.Join(d.PKI(), pki.NextDir), 0o700)
	for _, f := range []string{pki.CAKeyFile, filepath.Join(pki.NextDir, pki.CAKeyFile), pki.ImageSigningKey, pki.CACertFile, "etcd-1-key.pem"} {
		os.WriteFile(d.PKIFile(f), []byte("x"), 0o600)
	}
	if err := DropSigningKeys(d); err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]bool{pki.CAKeyFile: false, filepath.Join(pki.NextDir, pki.CAKeyFile): false, pki.ImageSigningKey: false, pki.CACertFile: true, "etcd-1-key.pem": true} {
		if _, err := os.Stat(d.PKIFile(f)); (err == nil) != want {
			t.Errorf("%s: present %v, want %v", f, err == nil, want)
		}
	}
	if err := DropSigningKeys(d); err != nil {
		t.Errorf("again: %v", err)
	}
}
