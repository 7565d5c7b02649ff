package render

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"gopkg.in/yaml.v3"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/render/ -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from %s; if the change is meant, run go test ./internal/render/ -update and review the diff", name, path)
	}
}

// TestRulesAndDashboardAreGolden: prometheus-rules.yml and
// grafana-dashboard.json for the default spec, as reviewed.
func TestRulesAndDashboardAreGolden(t *testing.T) {
	c := defaultCluster(t)
	rules, err := Rules(c)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "prometheus-rules.golden", rules)
	dash, err := Dashboard(c)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "grafana-dashboard.golden", dash)
}

// TestDashboardIsValidAndStable: the dashboard is JSON that Grafana's
// own schema types read back, the same bytes every time, with a unique
// id per panel, every panel's queries on the $datasource variable, and
// every query of etcd's mixin in it.
func TestDashboardIsValidAndStable(t *testing.T) {
	c := defaultCluster(t)
	first, err := Dashboard(c)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		again, err := Dashboard(c)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first, again) {
			t.Fatal("two renders of the dashboard differ")
		}
	}
	if !json.Valid(first) {
		t.Fatal("the dashboard is not JSON")
	}
	plugins.RegisterDefaultPlugins()
	var d dashboard.Dashboard
	if err := json.Unmarshal(first, &d); err != nil {
		t.Fatalf("Grafana's dashboard schema does not read it: %v", err)
	}
	if d.Uid == nil || *d.Uid != "etcdimg-etcd" || d.Title == nil {
		t.Errorf("uid %v, title %v", d.Uid, d.Title)
	}
	ids := map[uint32]string{}
	var exprs []string
	panels := 0
	for _, pr := range d.Panels {
		if r := pr.RowPanel; r != nil {
			if ids[r.Id] != "" {
				t.Errorf("row %q has panel %q's id %d", *r.Title, ids[r.Id], r.Id)
			}
			ids[r.Id] = *r.Title
			continue
		}
		p := pr.Panel
		panels++
		title := *p.Title
		if p.Id == nil || ids[*p.Id] != "" {
			t.Errorf("panel %q: id %v is missing or taken", title, p.Id)
		} else {
			ids[*p.Id] = title
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", title)
		}
		b, _ := json.Marshal(p.Targets)
		var qs []struct {
			Expr       string `json:"expr"`
			RefID      string `json:"refId"`
			Datasource struct {
				Type string `json:"type"`
				UID  string `json:"uid"`
			} `json:"datasource"`
		}
		json.Unmarshal(b, &qs)
		for _, q := range qs {
			if q.Expr == "" || q.RefID == "" || q.Datasource.Type != "prometheus" || q.Datasource.UID != "$datasource" {
				t.Errorf("panel %q: query %+v lacks an expression, a refId or the $datasource", title, q)
			}
			exprs = append(exprs, q.Expr)
		}
	}
	if panels != 23 {
		t.Errorf("%d panels, want the mixin's 13 and our 10", panels)
	}
	for _, mt := range append(slices.Clone(mixinTargets), grafana7xProposals...) {
		if mt.Name == "raftProposals" {
			continue // upstream's copy of leaderElections: see dashboard.go
		}
		if !slices.Contains(exprs, dashboardConfig.expr(mt)) {
			t.Errorf("the mixin's %s query is not on the dashboard: %s", mt.Name, dashboardConfig.expr(mt))
		}
	}
	// DashboardQueries, which the e2e test reads the rendered file
	// with, finds them all.
	qs, err := DashboardQueries(first)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != len(exprs) {
		t.Errorf("DashboardQueries found %d queries, the schema %d", len(qs), len(exprs))
	}
}

// TestDashboardQueriesParse: every panel's query, filled in as Grafana
// fills it, is PromQL that promtool accepts (as recording rules); and a
// broken one is refused, so that the check can fail.
func TestDashboardQueriesParse(t *testing.T) {
	dash, err := Dashboard(defaultCluster(t))
	if err != nil {
		t.Fatal(err)
	}
	qs, err := DashboardQueries(dash)
	if err != nil {
		t.Fatal(err)
	}
	check := func(qs []PanelQuery) (string, error) {
		type rule struct {
			Record string `yaml:"record"`
			Expr   string `yaml:"expr"`
		}
		var rules []rule
		for i, q := range qs {
			rules = append(rules, rule{Record: fmt.Sprintf("dashboard:panel_query_%d", i), Expr: ExpandQuery(q.Expr, "etcd-cluster-1", DashboardRateInterval)})
		}
		b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "queries.yml"), b, 0o644)
		return runPromtool(t, dir, "check", "rules", "queries.yml")
	}
	if out, err := check(qs); err != nil {
		t.Errorf("promtool check rules on the dashboard's queries: %v\n%s", err, out)
	}
	for _, q := range qs {
		if e := ExpandQuery(q.Expr, "etcd-cluster-1", DashboardRateInterval); strings.Contains(e, "$") {
			t.Errorf("panel %q: a variable is left after filling it in: %s", q.Panel, e)
		}
	}
	broken := append(slices.Clone(qs), PanelQuery{Panel: "broken", Expr: `sum(rate(etcd_server_has_leader{cluster="$cluster"}[$__rate_interval])`})
	if out, err := check(broken); err == nil {
		t.Errorf("promtool accepted an unbalanced query:\n%s", out)
	}
}

// readUpstreamTargets reads a verbatim copy of etcd's
// contrib/mixin/dashboards/targets.libsonnet: each target's name, its
// format string and its legend.
func readUpstreamTargets(t *testing.T) []mixinTarget {
	t.Helper()
	b, err := os.ReadFile("testdata/etcd-mixin/targets.libsonnet")
	if err != nil {
		t.Fatal(err)
	}
	head := regexp.MustCompile(`(?m)^  (\w+):\n`)
	expr := regexp.MustCompile(`prometheusQuery\.new\(\n\s+'\$' \+ variables\.datasource\.name,\n\s+'((?:[^'\\]|\\.)*)'`)
	legend := regexp.MustCompile(`withLegendFormat\((?:'((?:[^'\\]|\\.)*)'|\|\|\|\n\s*(.*?)\n\s*\|\|\|)\)`)
	src := string(b)
	locs := head.FindAllStringSubmatchIndex(src, -1)
	var out []mixinTarget
	for i, l := range locs {
		end := len(src)
		if i+1 < len(locs) {
			end = locs[i+1][0]
		}
		chunk := src[l[1]:end]
		e, lg := expr.FindStringSubmatch(chunk), legend.FindStringSubmatch(chunk)
		if e == nil || lg == nil {
			t.Fatalf("upstream target %s: no query or legend in\n%s", src[l[2]:l[3]], chunk)
		}
		mt := mixinTarget{Name: src[l[2]:l[3]], Expr: e[1], Legend: lg[1]}
		if lg[2] != "" {
			mt.Legend = lg[2] + "\n" // a ||| block ends with a newline
		}
		out = append(out, mt)
	}
	return out
}

// TestDashboardTargetsAreUpstreams: the mixin's dashboard queries in
// dashboard.go are targets.libsonnet's, in its order.
func TestDashboardTargetsAreUpstreams(t *testing.T) {
	up := readUpstreamTargets(t)
	if len(up) != 16 || len(up) != len(mixinTargets) {
		t.Fatalf("upstream has %d targets, dashboard.go %d; want 16", len(up), len(mixinTargets))
	}
	for i, u := range up {
		if mixinTargets[i] != u {
			t.Errorf("target %d differs from upstream's:\n got %#v\nwant %#v", i, mixinTargets[i], u)
		}
	}
}

// TestApplianceMetricsAreServedOrAgreed: every etcdimg_ metric the rules
// and the dashboard read is served by the node (firstboot's code names
// it) or is agreed and not served yet (MetricsNotExportedYet); once
// firstboot serves an agreed one, it must leave that list, so that the
// e2e check of the dashboard requires its panels to return data.
func TestApplianceMetricsAreServedOrAgreed(t *testing.T) {
	served := map[string]bool{}
	name := regexp.MustCompile(`etcdimg_[a-z_]+[a-z]`)
	err := filepath.WalkDir("../../firstboot", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		b, err := os.ReadFile(p)
		for _, n := range name.FindAllString(string(b), -1) {
			served[n] = true
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !served["etcdimg_backup_last_success_timestamp_seconds"] {
		t.Fatal("firstboot's code names no backup metric: is the test run from internal/render?")
	}
	c := defaultCluster(t)
	rules, err := Rules(c)
	if err != nil {
		t.Fatal(err)
	}
	dash, err := Dashboard(c)
	if err != nil {
		t.Fatal(err)
	}
	pending := MetricsNotExportedYet()
	read := map[string]bool{}
	for _, n := range name.FindAllString(string(rules)+string(dash), -1) {
		read[n] = true
	}
	for _, n := range sortedKeys(read) {
		switch {
		case served[n] && slices.Contains(pending, n):
			t.Errorf("%s is served by firstboot now: remove it from render.MetricsNotExportedYet, so that the e2e dashboard check requires its panels to return data", n)
		case !served[n] && !slices.Contains(pending, n):
			t.Errorf("the rules or the dashboard read %s, which the node does not serve and nobody agreed to", n)
		}
	}
	for _, n := range pending {
		if !read[n] {
			t.Errorf("%s is listed as agreed but nothing reads it", n)
		}
	}
}
