package render

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"etcdimg/internal/backup"
	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// ruleTestsFile holds promtool's unit tests of every rule: each fires on
// the series that should raise it, after its "for", and not on series
// just the other side of each of its thresholds.
const ruleTestsFile = "testdata/prometheus-rules.test.yml"

// promtool is Debian's promtool, which `make deps` installs with the
// prometheus package; without it the rule tests fail rather than skip.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is missing: `make deps` installs Debian's prometheus package, which has it")
	}
	return p
}

// runPromtool runs promtool in dir and returns its output and error.
func runPromtool(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func defaultCluster(t *testing.T) *spec.Cluster {
	t.Helper()
	c := spec.Default(3)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestAlertRulesPassPromtool checks the rendered rules and the scrape
// config that loads them with Debian's promtool, and runs promtool's own
// unit tests of every rule.
func TestAlertRulesPassPromtool(t *testing.T) {
	c := defaultCluster(t)
	dir := t.TempDir()
	rules, err := Rules(c)
	if err != nil {
		t.Fatal(err)
	}
	prom, err := Prometheus(c, nil, outdir.Layout(dir))
	if err != nil {
		t.Fatal(err)
	}
	// With metrics.tls, the scrape config names the scraper's pair,
	// which promtool finds and loads.
	tc := *c
	tc.Metrics.TLS = true
	set, err := pki.Ensure(&tc, filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "pki"), 0o700)
	for _, f := range set.Files() {
		os.WriteFile(filepath.Join(dir, "pki", f.Name), f.Data, f.Mode)
	}
	promTLS, err := Prometheus(&tc, nil, outdir.Layout(dir))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(promTLS), "scheme: https") || !strings.Contains(string(promTLS), "cert_file: "+filepath.Join(dir, "pki", pki.PrometheusCert)) {
		t.Errorf("metrics.tls scrape config:\n%s", promTLS)
	}
	tests, err := os.ReadFile(ruleTestsFile)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "prometheus-tls.yml"), promTLS, 0o644)
	os.WriteFile(filepath.Join(dir, RulesFile), rules, 0o644)
	os.WriteFile(filepath.Join(dir, "prometheus.yml"), prom, 0o644)
	os.WriteFile(filepath.Join(dir, "tests.yml"), tests, 0o644)
	for _, args := range [][]string{
		{"check", "rules", RulesFile},
		{"check", "config", "prometheus.yml"},
		{"check", "config", "prometheus-tls.yml"},
		{"test", "rules", "tests.yml"},
	} {
		if out, err := runPromtool(t, dir, args...); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// The alerts and the backup service agree on what is from the
	// future.
	if time.Duration(futureSkew)*time.Second != backup.MaxSkew {
		t.Errorf("the alerts' futureSkew is %ds, backup.MaxSkew %s", futureSkew, backup.MaxSkew)
	}
}

// The rules file and promtool's test file, as far as these tests read
// them.
type (
	rulesDoc struct {
		Groups []struct {
			Name  string  `yaml:"name"`
			Rules []Alert `yaml:"rules"`
		} `yaml:"groups"`
	}
	ruleTestDoc struct {
		RuleFiles          []string        `yaml:"rule_files"`
		EvaluationInterval string          `yaml:"evaluation_interval"`
		Tests              []ruleTestGroup `yaml:"tests"`
	}
	ruleTestGroup struct {
		Interval    string `yaml:"interval"`
		InputSeries []struct {
			Series string `yaml:"series"`
			Values string `yaml:"values"`
		} `yaml:"input_series"`
		AlertRuleTest []alertRuleTest `yaml:"alert_rule_test"`
	}
	alertRuleTest struct {
		EvalTime  string `yaml:"eval_time"`
		Alertname string `yaml:"alertname"`
		ExpAlerts []struct {
			ExpLabels      map[string]string `yaml:"exp_labels"`
			ExpAnnotations map[string]string `yaml:"exp_annotations"`
		} `yaml:"exp_alerts"`
	}
)

func readRuleTests(t *testing.T) ruleTestDoc {
	t.Helper()
	b, err := os.ReadFile(ruleTestsFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc ruleTestDoc
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", ruleTestsFile, err)
	}
	return doc
}

func renderedRules(t *testing.T) rulesDoc {
	t.Helper()
	b, err := Rules(defaultCluster(t))
	if err != nil {
		t.Fatal(err)
	}
	var doc rulesDoc
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

// TestEveryRuleHasAFiringAndAQuietCase: each rule (a name and a
// severity: the mixin has two rules of each of two names) fires in some
// promtool case, and each name has a case where it must not fire.
func TestEveryRuleHasAFiringAndAQuietCase(t *testing.T) {
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, g := range readRuleTests(t).Tests {
		for _, a := range g.AlertRuleTest {
			if len(a.ExpAlerts) == 0 {
				quiet[a.Alertname] = true
			}
			for _, e := range a.ExpAlerts {
				fires[a.Alertname+"/"+e.ExpLabels["severity"]] = true
			}
		}
	}
	n := 0
	for _, g := range renderedRules(t).Groups {
		for _, r := range g.Rules {
			n++
			if !fires[r.Alert+"/"+r.Labels["severity"]] {
				t.Errorf("%s (%s): no promtool case fires it", r.Alert, r.Labels["severity"])
			}
			if !quiet[r.Alert] {
				t.Errorf("%s: no promtool case where it stays quiet", r.Alert)
			}
		}
	}
	if n != len(mixinAlerts)+11 {
		t.Errorf("%d rules rendered, want the mixin's %d and our 11", n, len(mixinAlerts))
	}
}

// thresholdRE finds a threshold: a number right after a comparison.
var thresholdRE = regexp.MustCompile(`(==|!=|>=|<=|>|<)(\s*(?:bool\s+)?)(\d+(?:\.\d+)?)\b`)

// shifted are a threshold moved down and up: by a tenth, or by one for
// an integer whose tenth is less (a count of leader changes, a 0/1
// gauge), so that the promtool cases on either side must notice.
func shifted(s string) []string {
	v, _ := strconv.ParseFloat(s, 64)
	d := math.Abs(v) / 10
	if v == math.Trunc(v) && d < 1 {
		d = 1
	}
	var out []string
	for _, x := range []float64{v - d, v + d} {
		if x == math.Trunc(x) {
			out = append(out, strconv.FormatFloat(x, 'f', -1, 64))
		} else {
			out = append(out, strconv.FormatFloat(x, 'g', 6, 64))
		}
	}
	return out
}

// mutation is one threshold of one rule moved.
type mutation struct {
	group, rule int
	name, from  string
	to          string
	expr        string
}

func (m mutation) String() string {
	return fmt.Sprintf("%s: %s → %s in\n%s", m.name, m.from, m.to, m.expr)
}

// mutations are every threshold of every rule in doc, moved each way.
func mutations(doc rulesDoc) []mutation {
	var out []mutation
	for gi, g := range doc.Groups {
		for ri, r := range g.Rules {
			for _, loc := range thresholdRE.FindAllStringSubmatchIndex(r.Expr, -1) {
				num := r.Expr[loc[6]:loc[7]]
				for _, to := range shifted(num) {
					out = append(out, mutation{group: gi, rule: ri, name: r.Alert, from: num, to: to,
						expr: r.Expr[:loc[6]] + to + r.Expr[loc[7]:]})
				}
			}
		}
	}
	return out
}

// killed runs promtool's cases of m's rule against the rules with m
// applied, only that rule's name in the rules and the cases: promtool
// must fail, on an assertion about that rule.
func killed(t *testing.T, doc rulesDoc, tests ruleTestDoc, m mutation) (bool, string) {
	t.Helper()
	dir := t.TempDir()
	var rules rulesDoc
	rules.Groups = append(rules.Groups, doc.Groups[m.group])
	rules.Groups[0].Rules = nil
	for ri, r := range doc.Groups[m.group].Rules {
		if r.Alert != m.name {
			continue
		}
		if ri == m.rule {
			r.Expr = m.expr
		}
		rules.Groups[0].Rules = append(rules.Groups[0].Rules, r)
	}
	cases := tests
	cases.Tests = nil
	for _, g := range tests.Tests {
		var keep []alertRuleTest
		for _, a := range g.AlertRuleTest {
			if a.Alertname == m.name {
				keep = append(keep, a)
			}
		}
		if len(keep) > 0 {
			g.AlertRuleTest = keep
			cases.Tests = append(cases.Tests, g)
		}
	}
	for name, v := range map[string]any{RulesFile: rules, "tests.yml": cases} {
		b, err := yaml.Marshal(v)
		if err != nil {
			return false, err.Error()
		}
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	out, err := runPromtool(t, dir, "test", "rules", "tests.yml")
	return err != nil && strings.Contains(out, "alertname: "+m.name+","), out
}

// TestChangedThresholdsFailTheRuleTests moves every threshold of every
// rendered rule a tenth (or one) down and up, one at a time, and runs
// the rule's promtool cases on the result: each change must make them
// fail. A rule whose cases pass with a moved threshold is not tested by
// them.
func TestChangedThresholdsFailTheRuleTests(t *testing.T) {
	promtool(t)
	doc, tests := renderedRules(t), readRuleTests(t)
	muts := mutations(doc)
	// The rules with no threshold of their own: the mixin's growth
	// alert compares a prediction with the quota.
	without := map[string]bool{}
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			without[r.Alert] = true
		}
	}
	for _, m := range muts {
		delete(without, m.name)
	}
	if names := sortedKeys(without); strings.Join(names, " ") != "etcdExcessiveDatabaseGrowth" {
		t.Errorf("rules without a threshold: %v, want only etcdExcessiveDatabaseGrowth", names)
	}
	var (
		mu       sync.Mutex
		survived []string
		wg       sync.WaitGroup
		sem      = make(chan struct{}, 2) // the machine has two cores
	)
	for _, m := range muts {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if ok, out := killed(t, doc, tests, m); !ok {
				mu.Lock()
				survived = append(survived, m.String()+"\n"+out)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, s := range survived {
		t.Errorf("promtool's cases still pass with a threshold moved: %s", s)
	}
	t.Logf("%d threshold changes, each failing its rule's promtool cases", len(muts)-len(survived))
}

// TestTheThresholdCheckCatchesAWeakTest: without the case just under
// EtcdDatabaseNearQuota's 0.8, lowering it to 0.72 goes unnoticed, and
// the check says so.
func TestTheThresholdCheckCatchesAWeakTest(t *testing.T) {
	promtool(t)
	doc, tests := renderedRules(t), readRuleTests(t)
	var weak ruleTestDoc = tests
	weak.Tests = nil
	for _, g := range tests.Tests {
		var keep []alertRuleTest
		for _, a := range g.AlertRuleTest {
			if a.Alertname != "EtcdDatabaseNearQuota" || len(a.ExpAlerts) > 0 {
				keep = append(keep, a)
			}
		}
		g.AlertRuleTest = keep
		weak.Tests = append(weak.Tests, g)
	}
	var lower, higher *mutation
	for _, m := range mutations(doc) {
		if m.name == "EtcdDatabaseNearQuota" {
			switch m.to {
			case "0.72":
				lower = &m
			case "0.88":
				higher = &m
			}
		}
	}
	if lower == nil || higher == nil {
		t.Fatal("no 0.72 and 0.88 among EtcdDatabaseNearQuota's mutations")
	}
	if ok, out := killed(t, doc, weak, *lower); ok {
		t.Errorf("without its quiet case, EtcdDatabaseNearQuota's tests noticed 0.8 → 0.72:\n%s", out)
	}
	if ok, out := killed(t, doc, weak, *higher); !ok {
		t.Errorf("EtcdDatabaseNearQuota's firing case did not notice 0.8 → 0.88:\n%s", out)
	}
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
