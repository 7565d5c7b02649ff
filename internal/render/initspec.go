package render

import (
	"fmt"
	"path/filepath"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
)

// WriteDefaultSpec is `init`: the default spec of nodes members, written
// to path for editing. It never writes over a file.
func WriteDefaultSpec(path string, nodes int) (*spec.Cluster, error) {
	if Exists(path) {
		return nil, fmt.Errorf("init: %s already exists; edit it, or pass --config to write elsewhere", path)
	}
	if nodes < 1 || nodes > spec.MaxMembers {
		return nil, fmt.Errorf("--nodes %d: want 1 to %d members (3 or 5 tolerate failures)", nodes, spec.MaxMembers)
	}
	c := spec.Default(nodes)
	b, err := spec.Marshal(c)
	if err != nil {
		return nil, err
	}
	if _, err := outdir.Write(filepath.Dir(path), []outdir.File{{Path: filepath.Base(path), Data: b, Mode: 0o644}}); err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	return c, nil
}
