package render

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// upstreamAlert is one alert as etcd's alerts.libsonnet writes it.
type upstreamAlert struct {
	Name, Expr, For, Severity, Description, Summary, RunbookURL string
}

// readUpstreamAlerts reads the alerts of a verbatim copy of etcd's
// contrib/mixin/alerts/alerts.libsonnet: enough jsonnet to read its
// literal fields and its ||| text blocks, which keep their lines less
// the first line's indentation, as jsonnet does.
func readUpstreamAlerts(t *testing.T) []upstreamAlert {
	t.Helper()
	b, err := os.ReadFile("testdata/etcd-mixin/alerts.libsonnet")
	if err != nil {
		t.Fatal(err)
	}
	field := func(chunk, name string) string {
		m := regexp.MustCompile(`(?m)^\s*'?` + name + `'?: '((?:[^'\\]|\\.)*)'`).FindStringSubmatch(chunk)
		if m == nil {
			return ""
		}
		return m[1]
	}
	var out []upstreamAlert
	chunks := strings.Split(string(b), "alert: '")
	for _, chunk := range chunks[1:] {
		a := upstreamAlert{
			Name:        chunk[:strings.Index(chunk, "'")],
			For:         field(chunk, "for"),
			Severity:    field(chunk, "severity"),
			Description: field(chunk, "description"),
			Summary:     field(chunk, "summary"),
			RunbookURL:  field(chunk, "runbook_url"),
		}
		m := regexp.MustCompile(`expr: \|\|\|\n((?s:.*?))\n\s*\|\|\|`).FindStringSubmatch(chunk)
		if m == nil {
			t.Fatalf("upstream %s: no ||| expression", a.Name)
		}
		lines := strings.Split(m[1], "\n")
		indent := lines[0][:len(lines[0])-len(strings.TrimLeft(lines[0], " "))]
		for i, l := range lines {
			lines[i] = strings.TrimPrefix(l, indent)
		}
		a.Expr = strings.Join(lines, "\n") + "\n"
		out = append(out, a)
	}
	return out
}

// TestMixinAlertsAreUpstreams: the mixin's alerts carried in mixin.go
// are upstream's, field by field and in order.
func TestMixinAlertsAreUpstreams(t *testing.T) {
	up := readUpstreamAlerts(t)
	if len(up) != 15 || len(mixinAlerts) != len(up) {
		t.Fatalf("upstream has %d alerts, mixin.go %d; want 15 in each", len(up), len(mixinAlerts))
	}
	for i, u := range up {
		got := upstreamAlert(mixinAlerts[i])
		if got != u {
			t.Errorf("alert %d differs from upstream's:\n got %#v\nwant %#v", i, got, u)
		}
	}
}

// TestMixinAlertsUseOurScrapeConfig: rendered, the mixin's templates
// select this cluster's etcd job, aggregate away both labels that tell
// members apart, name the cluster by its label and take four scrapes
// as etcdMembersDown's window; nothing is left unfilled.
func TestMixinAlertsUseOurScrapeConfig(t *testing.T) {
	for _, a := range MixinAlerts(defaultCluster(t)) {
		for _, s := range []string{a.Expr, a.Annotations["description"]} {
			if strings.Contains(s, "%(") || strings.Contains(s, "%s") || strings.Contains(s, "%%") {
				t.Errorf("%s: a template is left unfilled: %s", a.Alert, s)
			}
		}
		if n := strings.Count(a.Expr, `{job="etcd",cluster="etcd-cluster-1"`); n == 0 {
			t.Errorf("%s does not select the cluster's etcd job: %s", a.Alert, a.Expr)
		}
		if strings.Contains(a.Expr, "without (instance)") {
			t.Errorf("%s aggregates away instance but not member: %s", a.Alert, a.Expr)
		}
		if !strings.Contains(a.Annotations["description"], `etcd cluster "{{ $labels.cluster }}"`) {
			t.Errorf("%s: description %q does not name the cluster by its label", a.Alert, a.Annotations["description"])
		}
		if a.Alert == "etcdMembersDown" && !strings.Contains(a.Expr, "[40s]") {
			t.Errorf("etcdMembersDown's window is not four 10 s scrapes: %s", a.Expr)
		}
	}
}
