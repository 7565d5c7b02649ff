package render

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// TestReportSaysWhatRunDid: the first run issues and writes everything;
// a second one reuses and leaves everything unchanged.
func TestReportSaysWhatRunDid(t *testing.T) {
	c := spec.Default(1)
	dir := outdir.Layout(filepath.Join(t.TempDir(), "out"))
	for _, want := range [][]string{
		{"spec     from.yaml\n", "(new, ", "cert issued", " written)\n", "\nmetrics  " + dir.Prometheus() + " (plain HTTP; alert rules in "},
		{"(reused, ", "cert reused", " unchanged)\n", ", 0 written, "},
	} {
		res, err := Run(c, dir)
		if err != nil {
			t.Fatal(err)
		}
		var w strings.Builder
		res.Report(&w, c, dir, "from.yaml")
		for _, s := range want {
			if !strings.Contains(w.String(), s) {
				t.Errorf("report lacks %q:\n%s", s, w.String())
			}
		}
	}
}

// TestRotationStepsReportEachPhase: rotate ca's lines, phase by phase,
// as the verb prints them after each roll; the drop finishes the
// rotation. rotate certs reports the reissued clients.
func TestRotationStepsReportEachPhase(t *testing.T) {
	c := spec.Default(1)
	dir := rendered(t, c)
	ca := dir.PKIFile(pki.CACertFile)
	for i, want := range []string{
		"upgraded 1 members onto the trust phase in 2.0s, data disks kept\nphase 1 of 3 (trust) done: every member trusts the old CA and the new one (" + ca + " holds both)",
		"upgraded 1 members onto the switch phase in 2.0s, data disks kept\nphase 2 of 3 (switch) done: the new CA signs; every member, the admin, the Kubernetes API server (" + filepath.Join(dir.Dir(), KubeDir) + ") and the clients (app) have new certificates",
		"upgraded 1 members onto the drop phase in 2.0s, data disks kept\nphase 3 of 3 (drop) done: only the new CA is trusted; a certificate of the old one is refused on every port\nrotation complete: the old CA's certificate, key and the certificates it signed are under " + filepath.Join(dir.Dir(), RetiredDir),
	} {
		s, err := NextRotationStep(dir)
		if err != nil {
			t.Fatal(err)
		}
		stamp := "2025010" + string(rune('1'+i)) + "T000000"
		if err := s.Write(c, dir, stamp); err != nil {
			t.Fatal(err)
		}
		var w strings.Builder
		s.Opening(&w)
		if w.Len() > 0 {
			t.Errorf("%s: opening %q", s.Phase, w.String())
		}
		if _, err := Run(c, dir); err != nil {
			t.Fatal(err)
		}
		if err := s.Rolled(&w, c, dir, stamp, 1, 2*time.Second); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(w.String(), want) {
			t.Errorf("%s phase:\n%s\nwant the start\n%s", s.Phase, w.String(), want)
		}
	}
	if s, err := NextRotationStep(dir); err != nil || s.Phase != pki.PhaseTrust {
		t.Errorf("after the drop the next step is %+v, %v; want a new rotation", s, err)
	}
	var w strings.Builder
	(RotationStep{Phase: pki.PhaseTrust, Resume: true}).Opening(&w)
	if want := "resuming the trust phase: its files are written; upgrading the members onto them again\n"; w.String() != want {
		t.Errorf("resume: %q", w.String())
	}
	w.Reset()
	if err := CertsRotated(&w, c, dir, "20250201T000000", 1, time.Second, 5); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(w.String(), "\nclients  reissued app in "+dir.Clients()+": ") || !strings.HasSuffix(w.String(), "retired  5 old certificate and key files moved under "+RetiredPath(dir, "20250201T000000")+"\n") {
		t.Errorf("rotate certs:\n%s", w.String())
	}
}
