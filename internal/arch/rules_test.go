package arch

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// moduleImports is the import graph of the module's packages as the go
// command sees it when it builds the node binary (no cgo, linux/amd64:
// a file behind another build constraint is not what ships): each
// package they build from, the libraries' included, and its direct,
// non-test imports.
func moduleImports(t *testing.T) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-e", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", "etcdimg/...")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	g := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		g[f[0]] = f[1:]
	}
	if len(g) < 100 || g["etcdimg/cmd/etcdnode"] == nil {
		t.Fatalf("go list found %d packages; is the test run inside the module?", len(g))
	}
	return g
}

// TestTheModuleKeepsTheLayoutsImportRules is the rule the layout is built
// on: it fails, naming the edge, when a forbidden import appears.
func TestTheModuleKeepsTheLayoutsImportRules(t *testing.T) {
	for _, v := range Violations(moduleImports(t)) {
		t.Error(v)
	}
}

// TestTheCheckerCatchesEachKindOfForbiddenEdge: the checker itself, on
// small graphs that break one rule each, so that it cannot pass a
// graph it should refuse.
func TestTheCheckerCatchesEachKindOfForbiddenEdge(t *testing.T) {
	base := map[string][]string{
		"etcdimg/internal/layout":    nil,
		"etcdimg/internal/spec":      {"etcdimg/internal/layout", "gopkg.in/yaml.v3"},
		"etcdimg/ignition/ign":       {"etcdimg/internal/layout"},
		"etcdimg/pki":                {"etcdimg/internal/spec"},
		"etcdimg/ignition":           {"etcdimg/pki", "etcdimg/ignition/ign"},
		"etcdimg/firstboot/join":     {"etcdimg/ignition/ign", "etcdimg/firstboot/datadisk"},
		"etcdimg/firstboot/datadisk": nil,
		"etcdimg/firstboot/platform": nil,
		"etcdimg/firstboot":          {"etcdimg/firstboot/join"},
		"etcdimg/cmd/etcdnode":       {"etcdimg/firstboot"},
		"etcdimg/cluster":            {"etcdimg/internal/layout"},
		"etcdimg/testvm":             nil,
		"etcdimg/testvm/local":       {"etcdimg/cluster", "etcdimg/testvm"},
		"etcdimg/internal/etcdtest":  nil,
		"etcdimg/internal/render":    {"etcdimg/internal/layout"},
		"example.com/lib":            {"gopkg.in/yaml.v3"},
	}
	with := func(pkg string, deps ...string) map[string][]string {
		g := map[string][]string{}
		for k, v := range base {
			g[k] = v
		}
		g[pkg] = append(append([]string(nil), g[pkg]...), deps...)
		return g
	}
	if v := Violations(base); len(v) != 0 {
		t.Fatalf("a graph that keeps the rules: %q", v)
	}
	for _, tc := range []struct {
		name  string
		graph map[string][]string
		want  string
	}{
		{"the image reaches pki through another package", with("etcdimg/ignition/ign", "etcdimg/pki"), "the image's etcdimg/cmd/etcdnode reaches the host's etcdimg/pki"},
		{"firstboot imports the spec parser", with("etcdimg/firstboot/join", "etcdimg/internal/spec"), "reaches the host's etcdimg/internal/spec"},
		{"firstboot imports ignition itself", with("etcdimg/firstboot", "etcdimg/ignition"), "reaches the host's etcdimg/ignition ("},
		{"cluster imports testvm", with("etcdimg/cluster", "etcdimg/testvm"), "QEMU comes in through cluster.Driver"},
		{"cluster imports firstboot", with("etcdimg/cluster", "etcdimg/firstboot/join"), "QEMU comes in through cluster.Driver"},
		{"a lower layer imports an upper one", with("etcdimg/pki", "etcdimg/ignition"), "a lower layer never imports an upper one"},
		{"the platform reaches into the data disk", with("etcdimg/firstboot/platform", "etcdimg/firstboot/datadisk"), "firstboot's steps stay apart"},
		{"a step imports PID 1", with("etcdimg/firstboot/join", "etcdimg/firstboot"), "imports its parent etcdimg/firstboot"},
		{"production code imports a test double", with("etcdimg/cluster", "etcdimg/internal/etcdtest"), "test doubles are for _test.go files"},
		{"a package in no layer", with("etcdimg/util"), "etcdimg/util is in no layer"},
		{"the image links the spec's YAML parser through a library", with("etcdimg/firstboot/join", "example.com/lib"), "reaches the host's gopkg.in/yaml.v3 (etcdimg/firstboot/join → example.com/lib → gopkg.in/yaml.v3)"},
		{"the image links cfssl", with("etcdimg/firstboot/join", "github.com/cloudflare/cfssl/signer/local"), "reaches the host's github.com/cloudflare/cfssl/signer/local"},
		{"the image imports a host package of a lower rank", with("etcdimg/firstboot", "etcdimg/internal/render"), "the image's etcdimg/firstboot reaches the host's etcdimg/internal/render"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := Violations(tc.graph)
			if !strings.Contains(strings.Join(v, "\n"), tc.want) {
				t.Errorf("violations %q, want one containing %q", v, tc.want)
			}
		})
	}
}
