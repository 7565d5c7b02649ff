package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/testvm"
)

// promResult is one instant query's answer: how many series, or
// Prometheus' refusal.
func promResult(port int, q string) (int, error) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/query?query=%s", port, url.QueryEscape(q)))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return 0, fmt.Errorf("%v: %s", err, b)
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("prometheus refused it: %s", r.Error)
	}
	return len(r.Data.Result), nil
}

// checkDashboardQueries asks the Prometheus on port, which scrapes the
// cluster of the output directory out, every query of the dashboard
// render wrote there, filled in as Grafana fills it for the dashboard's
// cluster: each must return series. A query on a metric the node does
// not serve yet (render.MetricsNotExportedYet) must return none, and
// says so in the log. One query per expression, after one wait until
// every target has been scraped twice within $__rate_interval, so that
// rates have two samples; dir holds prometheus.log.
func checkDashboardQueries(t *testing.T, out string, port int, dir string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(out, outdir.DashboardFile))
	if err != nil {
		t.Fatal(err)
	}
	qs, err := render.DashboardQueries(b)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Templating struct {
			List []struct {
				Name    string `json:"name"`
				Current struct {
					Value string `json:"value"`
				} `json:"current"`
			} `json:"list"`
		} `json:"templating"`
	}
	json.Unmarshal(b, &d)
	cluster := ""
	for _, v := range d.Templating.List {
		if v.Name == "cluster" {
			cluster = v.Current.Value
		}
	}
	if cluster == "" || len(qs) == 0 {
		t.Fatalf("%s: cluster variable %q, %d queries", outdir.DashboardFile, cluster, len(qs))
	}
	ready := fmt.Sprintf(`min(count_over_time(up{cluster=%q}[%s])) >= 2`, cluster, render.DashboardRateInterval)
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
		if n, err := promResult(port, ready); err == nil && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus has not scraped every target twice within %s\n%s", render.DashboardRateInterval, testvm.TailFile(filepath.Join(dir, "prometheus.log"), 15))
		}
	}
	pending := render.MetricsNotExportedYet()
	for _, q := range qs {
		expr := render.ExpandQuery(q.Expr, cluster, render.DashboardRateInterval)
		n, err := promResult(port, expr)
		waits := slices.ContainsFunc(pending, func(m string) bool { return strings.Contains(expr, m) })
		switch {
		case err != nil:
			t.Errorf("panel %q: %s: %v", q.Panel, expr, err)
		case waits && n > 0:
			t.Errorf("panel %q: %s returns %d series: the node serves it now; remove it from render.MetricsNotExportedYet", q.Panel, expr, n)
		case waits:
			t.Logf("panel %q: %s: no series, as agreed until the node serves it", q.Panel, expr)
		case n == 0:
			t.Errorf("panel %q: %s returns no series from the cluster's Prometheus", q.Panel, expr)
		}
	}
}
