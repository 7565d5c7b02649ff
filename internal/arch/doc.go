// Package arch holds the layout's import rules, checked by its test over
// the module's real import graph (`go list`): which side runs a package
// decides where it lives, and the compiler and this test keep the sides
// apart.
//
//   - The image's code (cmd/etcdnode, cmd/etcdinit, firstboot/...) reaches,
//     directly or through any library, only its own tree and what the
//     builder and the appliance share (ignition/ign, internal/layout,
//     input, snapshot, authz, backup, slot, maintain): never pki, image, ignition itself,
//     cluster, testvm, cmd/etcdimg, internal/spec, render, restore, outdir,
//     nor the host's libraries (the YAML parser, cfssl, Butane, the cpio
//     writer). The graph is the one the node binary is built from
//     (CGO_ENABLED=0, linux/amd64).
//   - cluster/... never imports testvm/... or firstboot/...: QEMU comes in
//     through cluster.Driver.
//   - Lower layers never import upper ones (Rank); firstboot's
//     subpackages never import firstboot itself, and steps that must stay
//     apart never import each other (platform and network never reach
//     the data disk or the join; the data disk never reaches the join).
//   - Test doubles (internal/etcdtest, s3test, cloudsim, pkitest) are for tests
//     only.
//
// It has no code of its own beyond the rules.
package arch

import "strings"

// Rank orders the module's packages in the direction data flows: a
// package may import packages of a lower rank, or of its own group (the
// same top-level name), never of a higher rank. The longest matching
// prefix wins.
var Rank = []struct {
	Prefix string
	Rank   int
}{
	{"etcdimg/internal/layout", 0},
	{"etcdimg/internal/input", 0},
	{"etcdimg/internal/spec", 1},
	{"etcdimg/internal/snapshot", 1},
	{"etcdimg/internal/authz", 1},
	{"etcdimg/internal/slot", 1},
	{"etcdimg/internal/maintain", 1},
	{"etcdimg/internal/outdir", 1},
	{"etcdimg/ignition/ign", 1},
	{"etcdimg/image/deb", 1},
	{"etcdimg/internal/backup", 2},
	{"etcdimg/pki", 2},
	{"etcdimg/ignition", 3},
	{"etcdimg/internal/restore", 4},
	{"etcdimg/internal/render", 5},
	{"etcdimg/image", 6},
	{"etcdimg/firstboot", 6},
	{"etcdimg/cluster", 7},
	{"etcdimg/testvm", 8},
	{"etcdimg/cmd", 9},
	{"etcdimg/e2e", 10},
}

// rankOf is the rank of pkg and the prefix that gave it; ok is false for
// a package no rule names.
func rankOf(pkg string) (rank int, prefix string, ok bool) {
	for _, r := range Rank {
		if (pkg == r.Prefix || strings.HasPrefix(pkg, r.Prefix+"/")) && len(r.Prefix) > len(prefix) {
			rank, prefix, ok = r.Rank, r.Prefix, true
		}
	}
	return rank, prefix, ok
}
