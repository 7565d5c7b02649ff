package local

import (
	"context"
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"etcdimg/cluster"
	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
)

// lifecycleOptions are the options of a rendered one-member cluster in a
// new directory, recording in steps what ran: the prepare and the build.
func lifecycleOptions(t *testing.T, steps *[]string) LifecycleOptions {
	t.Helper()
	dir := outdir.Layout(t.TempDir())
	c := spec.Default(1)
	if _, err := render.Run(c, dir); err != nil {
		t.Fatal(err)
	}
	return LifecycleOptions{
		Cluster: c, Dir: dir, Timeout: time.Minute, Out: &nopWriter{},
		Prepare: func(*spec.Cluster, outdir.Layout) error { *steps = append(*steps, "prepare"); return nil },
		Build: func(only []string) (map[string]string, error) {
			*steps = append(*steps, "build")
			return map[string]string{}, nil
		},
	}
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }

// TestARefusedCheckBuildsNothing: replace and roll run their check
// before anything else; a refusal neither prepares nor builds, and the
// run directory's lock of a cluster under `up` is released (the next
// command takes it). The check sees this package's Driver under `up`,
// cluster's ManualDriver without.
func TestARefusedCheckBuildsNothing(t *testing.T) {
	for _, underUp := range []bool{false, true} {
		var steps []string
		o := lifecycleOptions(t, &steps)
		if underUp {
			os.MkdirAll(o.Dir.RunDir(), 0o700)
			st := &State{RunDir: o.Dir.RunDir(), Members: []MemberState{{Name: "etcd-1", Client: 1, Metrics: 2, Backup: 3}}}
			if err := st.save(); err != nil {
				t.Fatal(err)
			}
		}
		refused := errors.New("refused")
		check := func(_ context.Context, l *cluster.Lifecycle) error {
			steps = append(steps, "check")
			if _, ok := l.Driver.(*Driver); ok != underUp {
				t.Errorf("under up %v: driver %T", underUp, l.Driver)
			}
			return refused
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := o.run(ctx, "roll", nil, check, func(context.Context, *cluster.Lifecycle, map[string]string) error {
			t.Error("ran after a refused check")
			return nil
		})
		cancel()
		if !errors.Is(err, refused) {
			t.Errorf("under up %v: %v, want the check's refusal", underUp, err)
		}
		if !slices.Equal(steps, []string{"check"}) {
			t.Errorf("under up %v: ran %v, want the check only", underUp, steps)
		}
		if underUp {
			_, lock, err := Open(o.Dir)
			if err != nil {
				t.Fatalf("the lock was kept: %v", err)
			}
			lock.Unlock()
		}
	}
}

// TestNothingIsBuiltForAClusterThatDoesNotAnswer: a check that passes
// is not enough: with no cluster answering at the spec's addresses,
// Replace and Roll fail before preparing or building anything.
func TestNothingIsBuiltForAClusterThatDoesNotAnswer(t *testing.T) {
	var steps []string
	o := lifecycleOptions(t, &steps)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := Replace(ctx, o, "etcd-1", true); err == nil {
		t.Error("replace of a cluster that does not answer succeeded")
	}
	if _, _, err := Roll(ctx, o, true); err == nil {
		t.Error("roll of a cluster that does not answer succeeded")
	}
	if len(steps) > 0 {
		t.Errorf("ran %v", steps)
	}
}
