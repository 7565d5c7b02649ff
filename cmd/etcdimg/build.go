package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/deb"
	"etcdimg/image"
)

// bootFlags name the inputs every image is made from.
type bootFlags struct {
	kernel, bootloader, node string
}

func (f *bootFlags) register(c *cobra.Command) {
	c.Flags().StringVar(&f.kernel, "kernel-package", "", "Debian kernel package (.deb) (default: newest linux-image-*-cloud-amd64 in the package cache)")
	c.Flags().StringVar(&f.bootloader, "bootloader-package", "", "Debian systemd-boot-efi package (.deb) (default: the one in the package cache)")
	c.Flags().StringVar(&f.node, "node-binary", "", "the in-image multi-call binary (default: etcdnode beside this etcdimg)")
}

func (f *bootFlags) inputs() (image.Inputs, error) {
	in := image.Inputs{KernelDeb: f.kernel, BootloaderDeb: f.bootloader, NodeBinary: f.node}
	var err error
	cache := deb.CacheDir()
	if in.KernelDeb == "" {
		if in.KernelDeb, err = deb.Find(cache, deb.Kernel); err != nil {
			return in, fmt.Errorf("--kernel-package: %w", err)
		}
	}
	if in.BootloaderDeb == "" {
		if in.BootloaderDeb, err = deb.Find(cache, deb.Bootloader); err != nil {
			return in, fmt.Errorf("--bootloader-package: %w", err)
		}
	}
	if in.NodeBinary == "" {
		exe, err := os.Executable()
		if err != nil {
			return in, err
		}
		in.NodeBinary = filepath.Join(filepath.Dir(exe), "etcdnode")
	}
	for flag, p := range map[string]string{"--kernel-package": in.KernelDeb, "--bootloader-package": in.BootloaderDeb, "--node-binary": in.NodeBinary} {
		if _, err := os.Stat(p); err != nil {
			return in, fmt.Errorf("%s: %w", flag, err)
		}
	}
	return in, nil
}

func buildCmd() *cobra.Command {
	var f specFlags
	var bf bootFlags
	c := &cobra.Command{
		Use:   "build",
		Short: "Render, then write a bootable disk image per member to OUT/images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The spec, then the image inputs, are read and checked before
			// anything is written: a bad package fails a build that has
			// not touched the output directory.
			c, from, err := f.load(cmd)
			if err != nil {
				return err
			}
			in, err := bf.inputs()
			if err != nil {
				return err
			}
			start := time.Now()
			boot, err := image.PrepareBoot(in)
			if err != nil {
				return err
			}
			dir, err := f.renderLoaded(cmd, c, from)
			if err != nil {
				return err
			}
			configs := map[string][]byte{}
			var names []string
			for _, m := range c.Members {
				b, err := os.ReadFile(dir.Ignition(m.Name))
				if err != nil {
					return err
				}
				configs[m.Name] = b
				names = append(names, m.Name)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "boot     kernel %s, %d modules, initramfs %.1f MiB (%.1f MiB unpacked)\n",
				boot.KernelVersion, len(boot.Modules), mib(int64(len(boot.Initrd))), mib(int64(len(boot.InitrdRaw))))
			built, err := image.WriteAll(dir.ImagesDir(), c.Name, names, configs, boot)
			if err != nil {
				return err
			}
			for _, b := range built {
				fmt.Fprintf(w, "image    %-8s %s (%.0f MiB, %.1f MiB allocated)\n", b.Member, b.Path, mib(b.Size), mib(b.Allocated))
			}
			fmt.Fprintf(w, "built %d images in %.1fs\n", len(built), time.Since(start).Seconds())
			return nil
		},
	}
	f.register(c)
	bf.register(c)
	return c
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
