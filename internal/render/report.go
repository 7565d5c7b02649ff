package render

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// What the verbs that change the output directory print: render's
// files, and each step of a certificate rotation.

// Report prints what Run did to dir for c, whose spec came from from: the
// CA, each member's certificate and config, the tool configs, what was
// retired, and the counts.
func (r *Result) Report(w io.Writer, c *spec.Cluster, dir outdir.Layout, from string) {
	state := map[bool]string{true: "written", false: "unchanged"}
	issued := func(name, yes, no string) string {
		return map[bool]string{true: yes, false: no}[slices.Contains(r.Issued, name)]
	}
	ca, _ := pki.ParseCert(r.PKI.CACert)
	fmt.Fprintf(w, "spec     %s\n", from)
	fmt.Fprintf(w, "CA       %s (%s, %s, until %s)\n", dir.PKIFile(pki.CACertFile), issued(pki.CACertFile, "new", "reused"), pki.KeyAlgorithm(ca), ca.NotAfter.Format(time.DateOnly))
	for _, m := range c.Members {
		rel, _ := dir.Rel(dir.Ignition(m.Name))
		st, _ := os.Stat(dir.Ignition(m.Name))
		fmt.Fprintf(w, "member   %-8s %-15s cert %-6s  %s (%d bytes, %s)\n", m.Name, m.IP, issued(pki.MemberCertFile(m.Name), "issued", "reused"), dir.Ignition(m.Name), st.Size(), state[slices.Contains(r.Changed, rel)])
	}
	fmt.Fprintf(w, "etcdctl  source %s\n", dir.EtcdctlEnv())
	scrape := "plain HTTP"
	if c.Metrics.TLS {
		scrape = "mTLS with " + dir.PKIFile(pki.PrometheusCert)
	}
	fmt.Fprintf(w, "metrics  %s (%s; alert rules in %s, Grafana dashboard in %s)\n", dir.Prometheus(), scrape, RulesFile, DashboardFile)
	fmt.Fprintf(w, "k8s      %s (%s for kubeadm, %s for k3s/RKE2; the API server's certificate may use /registry/ only)\n", filepath.Join(dir.Dir(), KubeDir), KubeadmFile, K3sFile)
	if len(r.Retired) > 0 {
		fmt.Fprintf(w, "retired  %s: members no longer in the spec, moved under %s/ (their data disks are left where they are)\n", strings.Join(r.Retired, ", "), filepath.Join(dir.Dir(), RetiredDir))
	}
	fmt.Fprintf(w, "%d files, %d written, %d unchanged\n", len(r.Files), len(r.Changed), len(r.Files)-len(r.Changed))
}

// CertsRotated ends `rotate certs` once its roll of members took took:
// the application clients' certificates are reissued, then the rotation
// is reported, with the count of files retired under stamp before it.
func CertsRotated(w io.Writer, c *spec.Cluster, dir outdir.Layout, stamp string, members int, took time.Duration, retired int) error {
	clients, err := ReissueClients(c, dir, stamp)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "rotated  %d member certificates and every other one in pki/ and kubernetes/ (admin, Kubernetes API server, scraper), same CA; every member upgraded onto its new one (a new boot slot each) in %.1fs, data disks kept\n", members, took.Seconds())
	if len(clients) > 0 {
		fmt.Fprintf(w, "clients  reissued %s in %s: hand each client its new pair (the old ones stay valid until they expire, as the CA is the same)\n", strings.Join(clients, ", "), dir.Clients())
	}
	fmt.Fprintf(w, "retired  %d old certificate and key files moved under %s\n", retired, RetiredPath(dir, stamp))
	return nil
}

// Opening says, before the step's roll, that the old CA expired or that
// the phase is resumed.
func (s RotationStep) Opening(w io.Writer) {
	if s.Expired {
		fmt.Fprintf(w, "the old CA expired before the trust phase was rolled out: switching to the new CA now\n")
	}
	if s.Resume {
		fmt.Fprintf(w, "resuming the %s phase: its files are written; upgrading the members onto them again\n", s.Phase)
	}
}

// Rolled records that the step's phase was rolled out to the members
// (MarkRotationRolled), reports it (members rolled in took), and says
// what the phase did and what external clients need next: the switch
// reissues the clients' certificates; the drop finishes the rotation.
func (s RotationStep) Rolled(w io.Writer, c *spec.Cluster, dir outdir.Layout, stamp string, members int, took time.Duration) error {
	if err := MarkRotationRolled(dir); err != nil {
		return err
	}
	fmt.Fprintf(w, "upgraded %d members onto the %s phase in %.1fs, data disks kept\n", members, s.Phase, took.Seconds())
	ca := dir.PKIFile(pki.CACertFile)
	switch s.Phase {
	case pki.PhaseTrust:
		fmt.Fprintf(w, "phase 1 of 3 (trust) done: every member trusts the old CA and the new one (%s holds both); every certificate is still the old CA's\n", ca)
		fmt.Fprintf(w, "next     give every external client %s as its trusted CA (it verifies the members' new certificates with it after the next phase), then run `etcdimg rotate ca` again\n", ca)
	case pki.PhaseSwitch:
		clients, err := ReissueClients(c, dir, stamp)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "phase 2 of 3 (switch) done: the new CA signs; every member, the admin, the Kubernetes API server (%s) and the clients (%s) have new certificates; the old CA's are still accepted\n", filepath.Join(dir.Dir(), KubeDir), strings.Join(clients, ", "))
		fmt.Fprintf(w, "next     hand every external client its new pair (and the Kubernetes API server the files in %s), then run `etcdimg rotate ca` again: certificates of the old CA are refused after it\n", filepath.Join(dir.Dir(), KubeDir))
	case pki.PhaseDrop:
		fmt.Fprintf(w, "phase 3 of 3 (drop) done: only the new CA is trusted; a certificate of the old one is refused on every port\n")
		return RotationFinished(w, dir, stamp)
	}
	return nil
}

// RotationFinished is FinishRotation, reported.
func RotationFinished(w io.Writer, dir outdir.Layout, stamp string) error {
	if err := FinishRotation(dir, stamp); err != nil {
		return err
	}
	fmt.Fprintf(w, "rotation complete: the old CA's certificate, key and the certificates it signed are under %s; `etcdimg rotate ca` starts a new rotation\n", filepath.Join(dir.Dir(), RetiredDir))
	return nil
}
