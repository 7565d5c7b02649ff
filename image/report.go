package image

import (
	"fmt"
	"io"
	"time"
)

// WriteReport is Write, saying on w what it writes: the boot files it
// starts from, the restore every image carries (as soon as it is read,
// even when writing fails later), then each file written, on a cloud
// where each member's config goes, and how long the build took since
// start.
func (b Build) WriteReport(w io.Writer, boot *Boot, ignition map[string][]byte, start time.Time) (*Written, error) {
	fmt.Fprintf(w, "boot     kernel %s, %d modules, initramfs %.1f MiB (%.1f MiB unpacked)\n",
		boot.KernelVersion, len(boot.Modules), inMiB(int64(len(boot.Initrd))), inMiB(int64(len(boot.InitrdRaw))))
	built, err := b.Write(boot, ignition)
	if built != nil && built.Plan != nil {
		p := built.Plan
		fmt.Fprintf(w, "restore  every image carries %s (%.1f MiB, revision %d, %d keys) for the new cluster %s\n", p.SnapshotPath(b.Dir), inMiB(p.Size), p.Revision, p.TotalKeys, p.Token)
	}
	if err != nil {
		return nil, err
	}
	for _, i := range built.Files {
		fmt.Fprintf(w, "image    %-8s %s (%.0f MiB, %.1f MiB allocated, %s)\n", i.Member, i.Path, inMiB(i.Size), inMiB(i.Allocated), i.State())
	}
	if b.Cloud() {
		for _, m := range b.Cluster.Members {
			fmt.Fprintf(w, "user-data %-8s %-15s %s\n", m.Name, m.IP, b.Dir.Ignition(m.Name))
		}
		fmt.Fprintf(w, "boot one instance per member from the image, with that member's fixed private IP and its config as user-data\n")
	}
	fmt.Fprintf(w, "built %d image files in %.1fs\n", len(built.Files), time.Since(start).Seconds())
	return built, nil
}

func inMiB(n int64) float64 { return float64(n) / mib }
