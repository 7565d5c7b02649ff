package image

import (
	"bytes"
	"etcdimg/internal/layout"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
)

// Paths inside the initramfs. cpio paths have no leading slash; the
// module paths are firstboot's, from package layout.
var (
	moduleDir       = strings.TrimPrefix(layout.ModuleDir, "/")
	moduleOrderFile = strings.TrimPrefix(layout.ModuleOrder, "/")
	moduleAliasFile = strings.TrimPrefix(layout.ModuleAliases, "/")
	moduleDepFile   = strings.TrimPrefix(layout.ModuleDeps, "/")
	dataDir         = strings.TrimPrefix(layout.DataMount, "/")
)

// InitPath is where the kernel finds PID 1.
const InitPath = "init"

// Programs are the names the multi-call binary answers to, linked in
// /usr/bin.
var Programs = []string{"etcd", "etcdctl", "etcdutl", path.Base(layout.BackupBinary)}

// Initramfs builds the appliance's root file system: the small init
// binary (cmd/etcdinit) as /init, the modules with their load order,
// the links by which the node binary's programs run from the ESP, the
// directories firstboot mounts on, and /dev/console so the kernel can
// give /init a console before devtmpfs is mounted. Nothing else: no
// shell, no login, no libraries (the binaries are static). The archive is
// newc cpio, entries sorted, timestamps and owners zeroed, zstd
// compressed.
func Initramfs(initBin []byte, modules []*Module) (compressed, raw []byte, err error) {
	recs := []cpio.Record{
		cpio.StaticFile(InitPath, string(initBin), 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.CharDev("dev/null", 0o666, 1, 3),
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "etc", dataDir, "usr/bin", strings.TrimPrefix(layout.ESPMount, "/"), moduleDir} {
		mode := uint64(0o755)
		switch d {
		case "tmp":
			mode = 0o1777
		case dataDir:
			mode = 0o700
		}
		recs = append(recs, cpio.Directory(d, mode))
	}
	for _, p := range Programs {
		recs = append(recs, cpio.Symlink("usr/bin/"+p, layout.NodeBinary))
	}
	var order, aliases, deps []string
	for _, m := range modules {
		file := m.Name + ".ko"
		recs = append(recs, cpio.StaticFile(path.Join(moduleDir, file), string(m.Data), 0o644))
		order = append(order, file)
		for _, a := range m.Aliases {
			aliases = append(aliases, "alias "+a+" "+m.Name)
		}
		var d []string
		for _, dep := range m.Depends {
			d = append(d, dep+".ko")
		}
		deps = append(deps, strings.TrimSpace(file+": "+strings.Join(d, " ")))
	}
	recs = append(recs,
		cpio.StaticFile(moduleOrderFile, strings.Join(order, "\n")+"\n", 0o644),
		cpio.StaticFile(moduleAliasFile, strings.Join(aliases, "\n")+"\n", 0o644),
		cpio.StaticFile(moduleDepFile, strings.Join(deps, "\n")+"\n", 0o644))

	// Every parent directory gets its own record: the kernel's unpacker
	// does not create missing parents.
	have := map[string]bool{}
	for _, r := range recs {
		have[r.Name] = true
	}
	for _, r := range slices.Clone(recs) {
		for d := path.Dir(r.Name); d != "." && !have[d]; d = path.Dir(d) {
			recs = append(recs, cpio.Directory(d, 0o755))
			have[d] = true
		}
	}
	// Parents before children, the same order every time.
	slices.SortFunc(recs, func(a, b cpio.Record) int { return strings.Compare(a.Name, b.Name) })
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	for _, r := range recs {
		if err := w.WriteRecord(cpio.MakeReproducible(r)); err != nil {
			return nil, nil, fmt.Errorf("image: initramfs: %w", err)
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return nil, nil, fmt.Errorf("image: initramfs: %w", err)
	}
	raw = buf.Bytes()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, nil, fmt.Errorf("image: initramfs: %w", err)
	}
	compressed = enc.EncodeAll(raw, nil)
	return compressed, raw, nil
}
