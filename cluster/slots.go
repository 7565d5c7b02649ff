package cluster

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"etcdimg/image"
	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/slot"
	"etcdimg/internal/spec"
)

// SlotTable writes, per member, the boot slot it runs (as its node API
// reports it) beside the slot of its last built image
// (images/manifest.json), and any rollback the member reports.
func SlotTable(ctx context.Context, w io.Writer, c *spec.Cluster, dir outdir.Layout, reach render.Endpoint) {
	api, err := AdminNodeAPI(c, dir, reach)
	if err != nil {
		fmt.Fprintf(w, "slots: %v\n", err)
		return
	}
	built, err := image.ReadManifest(dir)
	if err != nil {
		fmt.Fprintf(w, "slots: %v\n", err)
	}
	sts := make([]slot.Status, len(c.Members))
	errs := make([]error, len(c.Members))
	var wg sync.WaitGroup
	for i, m := range c.Members {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			sts[i], errs[i] = api.Status(cctx, m.Name)
		})
	}
	wg.Wait()
	for i, m := range c.Members {
		if errs[i] != nil {
			fmt.Fprintf(w, "slot     %-8s unknown: %v\n", m.Name, errs[i])
			continue
		}
		r := sts[i].Running
		etcd := ""
		if r.Manifest != nil {
			etcd = "etcd " + r.Manifest.Etcd
		}
		line := fmt.Sprintf("slot     %-8s %s gen %d %-6s %s digest %.12s", m.Name, r.ID, r.Gen, r.State, etcd, r.Digest)
		if b, ok := built[m.Name]; ok {
			if b.SlotDigest == r.Digest {
				line += ", the built image's"
			} else {
				line += fmt.Sprintf(", built image %.12s differs (etcdimg upgrade installs it)", b.SlotDigest)
			}
		}
		fmt.Fprintln(w, line)
		if why := sts[i].Stopped; why != "" {
			fmt.Fprintf(w, "slot     %-8s STOPPED: %s\n", m.Name, why)
		}
		if rb := sts[i].RolledBack; rb != nil {
			why := rb.Trial
			if why == "" {
				why = "no reason recorded"
			}
			fmt.Fprintf(w, "slot     %-8s ROLLED BACK from %s (gen %d) after %d tries: %s\n", m.Name, rb.ID, rb.Gen, rb.TriesDone, why)
		}
	}
}
