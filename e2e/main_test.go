// Package e2e holds the end-to-end tests: each one runs the built etcdimg
// and etcd binaries the way the README tells an operator to, and checks
// the result with independent tools (crypto/x509, openssl, etcd's own
// client).
package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"etcdimg/image/deb"
)

// bin holds the binaries built once for all tests.
var bin struct {
	etcdimg, etcd string
}

func TestMain(m *testing.M) {
	if c := os.Getenv(cloudCaseEnv); c != "" {
		// Re-run inside a network namespace for one cloud boot.
		os.Exit(cloudCaseMain(c))
	}
	// The pools of schedule_test.go decide how many tests boot VMs at
	// once; -parallel only has to let them all wait.
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		flag.Set("test.parallel", "16")
	}
	dir, err := os.MkdirTemp("", "etcdimg-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		bin.etcdimg = filepath.Join(dir, "etcdimg")
		node := filepath.Join(dir, "etcdnode")
		initBin := filepath.Join(dir, "etcdinit")
		for out, pkg := range map[string]string{bin.etcdimg: "etcdimg/cmd/etcdimg", node: "etcdimg/cmd/etcdnode", initBin: "etcdimg/cmd/etcdinit"} {
			cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if b, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", pkg, err, b)
				return 1
			}
		}
		// The appliance runs etcd as a link to the multi-call binary.
		bin.etcd = filepath.Join(dir, "etcd")
		if err := os.Symlink("etcdnode", bin.etcd); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		// The CLI runs from a temporary directory: tell it where `make deps`
		// put the Debian packages.
		if os.Getenv(deb.CacheEnv) == "" {
			abs, _ := filepath.Abs(filepath.Join("..", ".cache", "deb"))
			os.Setenv(deb.CacheEnv, abs)
		}
		return m.Run()
	}()
	os.Exit(code)
}
