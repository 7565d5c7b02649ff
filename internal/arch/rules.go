package arch

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// imageSide are the roots of the code that runs inside the image.
var imageSide = []string{"etcdimg/cmd/etcdnode", "etcdimg/cmd/etcdinit", "etcdimg/firstboot"}

// imageMayReach are the module's packages the image's code may reach:
// its own tree, and what the builder and the appliance share. Anything
// else of the module is the host's (pki, image, ignition, cluster,
// testvm, cmd/etcdimg, internal/spec, render, restore, outdir, and any
// package added later until it is listed here on purpose).
var imageMayReach = []string{
	"etcdimg/firstboot", "etcdimg/cmd/etcdnode", "etcdimg/cmd/etcdinit",
	"etcdimg/ignition/ign", "etcdimg/internal/layout", "etcdimg/internal/input",
	"etcdimg/internal/snapshot", "etcdimg/internal/authz", "etcdimg/internal/backup",
	"etcdimg/internal/slot", "etcdimg/internal/maintain",
}

// hostLibraries are outside libraries only the host uses: the spec's
// YAML parser, cfssl, Butane (Ignition's config parser is the image's
// too: ignition/ign reads the member's config with it), the initramfs
// writer. The node binary must not link them (it is copied into every
// image and paid for at every exec).
var hostLibraries = []string{
	"gopkg.in/yaml.v3", "github.com/cloudflare/cfssl", "github.com/coreos/ignition/v2/butane",
	"github.com/coreos/butane", "github.com/u-root/u-root",
}

// stepsApart are firstboot's steps that must not reach each other: the
// platform (where the config comes from) and the network never touch the
// data disk or decide anything about the cluster; the data disk knows the
// member only as an owner, never how it joins.
var stepsApart = map[string][]string{
	"etcdimg/firstboot/platform": {"etcdimg/firstboot/datadisk", "etcdimg/firstboot/join", "etcdimg/firstboot/backupd"},
	"etcdimg/firstboot/network":  {"etcdimg/firstboot/datadisk", "etcdimg/firstboot/join", "etcdimg/firstboot/platform", "etcdimg/firstboot/backupd"},
	"etcdimg/firstboot/datadisk": {"etcdimg/firstboot/join", "etcdimg/firstboot/platform", "etcdimg/firstboot/network", "etcdimg/firstboot/backupd"},
}

// testDoubles serve tests only.
var testDoubles = []string{"etcdimg/internal/etcdtest", "etcdimg/internal/s3test", "etcdimg/internal/cloudsim", "etcdimg/internal/pkitest"}

func under(pkg, prefix string) bool { return pkg == prefix || strings.HasPrefix(pkg, prefix+"/") }

func underAny(pkg string, prefixes []string) bool {
	return slices.ContainsFunc(prefixes, func(p string) bool { return under(pkg, p) })
}

// Violations checks an import graph (each package the module's packages
// build from, the module's own and the libraries', with its direct,
// non-test imports) against the rules, and returns one line per broken
// rule, sorted; none when the graph keeps them.
func Violations(imports map[string][]string) []string {
	var out []string
	for pkg, deps := range imports {
		if !strings.HasPrefix(pkg, "etcdimg/") || pkg == "etcdimg/internal/arch" || underAny(pkg, testDoubles) {
			continue
		}
		r, group, ok := rankOf(pkg)
		if !ok {
			out = append(out, fmt.Sprintf("%s is in no layer: add it to arch.Rank where its side and place in the flow put it", pkg))
			continue
		}
		for _, d := range deps {
			if !strings.HasPrefix(d, "etcdimg/") {
				continue
			}
			switch dr, dgroup, dok := rankOf(d); {
			case underAny(d, testDoubles):
				out = append(out, fmt.Sprintf("%s imports the test double %s: test doubles are for _test.go files", pkg, d))
			case !dok:
				out = append(out, fmt.Sprintf("%s imports %s, which is in no layer", pkg, d))
			case under(pkg, "etcdimg/cluster") && (under(d, "etcdimg/testvm") || under(d, "etcdimg/firstboot")):
				out = append(out, fmt.Sprintf("%s imports %s: cluster operates any deployment; QEMU comes in through cluster.Driver", pkg, d))
			case dgroup != group && dr >= r:
				out = append(out, fmt.Sprintf("%s (rank %d) imports %s (rank %d): a lower layer never imports an upper one", pkg, r, d, dr))
			case underAny(d, stepsApart[pkg]):
				out = append(out, fmt.Sprintf("%s imports %s: firstboot's steps stay apart (arch.stepsApart)", pkg, d))
			case under(pkg, "etcdimg/firstboot") && pkg != "etcdimg/firstboot" && d == "etcdimg/firstboot":
				out = append(out, fmt.Sprintf("%s imports its parent etcdimg/firstboot: PID 1 imports its steps, not the reverse", pkg))
			}
		}
	}
	// The image's code, with everything it reaches.
	for pkg := range imports {
		if !strings.HasPrefix(pkg, "etcdimg/") || !underAny(pkg, imageSide) {
			continue
		}
		for _, path := range reach(imports, pkg) {
			d := path[len(path)-1]
			if strings.HasPrefix(d, "etcdimg/") && !underAny(d, imageMayReach) || underAny(d, hostLibraries) {
				out = append(out, fmt.Sprintf("the image's %s reaches the host's %s (%s)", pkg, d, strings.Join(path, " → ")))
			}
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// reach returns, for each package pkg reaches (the module's and the
// libraries'), one import path from pkg to it.
func reach(imports map[string][]string, pkg string) [][]string {
	seen := map[string]bool{pkg: true}
	var out [][]string
	queue := [][]string{{pkg}}
	for len(queue) > 0 {
		path := queue[0]
		queue = queue[1:]
		for _, d := range imports[path[len(path)-1]] {
			if seen[d] {
				continue
			}
			seen[d] = true
			p := append(slices.Clone(path), d)
			out = append(out, p)
			queue = append(queue, p)
		}
	}
	return out
}
