package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"etcdimg/cluster"
	"etcdimg/image"
	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
	"etcdimg/testvm/local"
)

// app holds the flags every verb shares, registered once on the root
// command: a verb takes it and reads the output directory from it instead
// of registering --out itself.
type app struct {
	out string
}

// register adds the shared flags to the root command.
func (a *app) register(root *cobra.Command) {
	root.PersistentFlags().StringVar(&a.out, "out", outdir.Default, "output directory")
}

// dir is the output directory --out names.
func (a *app) dir() outdir.Layout { return outdir.Layout(a.out) }

// built is the output directory that `build` wrote, and its spec.
type built struct {
	c   *spec.Cluster
	dir outdir.Layout
}

// built reads the spec of the output directory that `build` wrote.
func (a *app) built() (*built, error) {
	if !render.Exists(a.dir().Spec()) {
		return nil, fmt.Errorf("%s has no etcdimg.yaml; run `etcdimg build --out %s` first", a.out, a.out)
	}
	c, _, err := render.LoadSpec(render.Source{}, a.dir())
	return &built{c, a.dir()}, err
}

// onBuilt is a RunE that reads the built directory first, the common
// start of the verbs that operate a built cluster.
func (a *app) onBuilt(run func(cmd *cobra.Command, args []string, b *built) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		b, err := a.built()
		if err != nil {
			return err
		}
		return run(cmd, args, b)
	}
}

// onEtcd is onBuilt, then the cluster's etcd API with the admin
// certificate.
func (a *app) onEtcd(run func(cmd *cobra.Command, args []string, b *built, e *cluster.Etcd) error) func(*cobra.Command, []string) error {
	return a.onBuilt(func(cmd *cobra.Command, args []string, b *built) error {
		e, err := b.etcd()
		if err != nil {
			return err
		}
		return run(cmd, args, b, e)
	})
}

// etcd is the cluster's etcd API with the admin certificate, through the
// forwarded ports under `up`, else at the members' addresses.
func (b *built) etcd() (*cluster.Etcd, error) { return cluster.Admin(b.c, b.dir, local.Reach(b.dir)) }

// interruptible is a context that Ctrl-C or SIGTERM cancels.
func interruptible() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// specFlags are the flags every command that reads a spec shares; the
// output directory is the app's.
type specFlags struct {
	*app
	config string
	nodes  int
}

func (f *specFlags) register(c *cobra.Command) {
	c.Flags().StringVar(&f.config, "config", "", "cluster spec to read (default: OUT/etcdimg.yaml, else the default spec)")
	c.Flags().IntVar(&f.nodes, "nodes", 3, "members of the default spec, when there is no spec file")
}

func (f *specFlags) load(c *cobra.Command) (*spec.Cluster, string, error) {
	if err := outdir.CheckFlag(f.out); err != nil {
		return nil, "", err
	}
	return render.LoadSpec(render.Source{ConfigPath: f.config, Nodes: f.nodes, NodesSet: c.Flags().Changed("nodes")}, f.dir())
}

// cluster is the spec load reads, without where it came from.
func (f *specFlags) cluster(c *cobra.Command) (*spec.Cluster, error) {
	cl, _, err := f.load(c)
	return cl, err
}

// bootFlags name the inputs every image is made from.
type bootFlags struct {
	kernel, bootloader, node, init string
}

func (f *bootFlags) register(c *cobra.Command) {
	c.Flags().StringVar(&f.kernel, "kernel-package", "", "Debian kernel package (.deb) (default: newest linux-image-*-cloud-amd64 in the package cache)")
	c.Flags().StringVar(&f.bootloader, "bootloader-package", "", "Debian systemd-boot-efi package (.deb) (default: the one in the package cache)")
	c.Flags().StringVar(&f.node, "node-binary", "", "the in-image multi-call binary (default: etcdnode beside this etcdimg)")
	c.Flags().StringVar(&f.init, "init-binary", "", "the initramfs's /init (default: etcdinit beside this etcdimg)")
}

// check is inputs, for a command that only needs them readable.
func (f *bootFlags) check() error {
	_, err := f.inputs()
	return err
}

func (f *bootFlags) inputs() (image.Inputs, error) {
	return image.ResolveInputs(image.Inputs{KernelDeb: f.kernel, BootloaderDeb: f.bootloader, NodeBinary: f.node, InitBinary: f.init})
}

// outputFlags choose what `build` writes: the platform and the formats.
// Commands that boot the images here (up, replace, roll, restore) write
// the default: a raw image per member for QEMU.
type outputFlags struct {
	formats, platform string
	compress          bool
	// memberSlots: on a cloud, upgrade's images (image.Build.MemberSlots).
	memberSlots bool
}

func (o *outputFlags) register(c *cobra.Command) {
	var formats []string
	for _, f := range image.Formats {
		formats = append(formats, fmt.Sprintf("%s (%s)", f.Name, f.For))
	}
	c.Flags().StringVar(&o.formats, "format", "raw", "output formats, comma-separated: "+strings.Join(formats, ", "))
	c.Flags().StringVar(&o.platform, "platform", layout.PlatformQEMU, "where the images boot: qemu or metal (an image per member, its config inside), or aws, gcp, azure, openstack (one image for every member; each member's config is its instance's user-data)")
	c.Flags().BoolVar(&o.compress, "compress", false, "compress qcow2 images")
}

// build validates the flags before any work.
func (o *outputFlags) build(only []string) (image.Build, error) {
	if _, ok := image.Platforms[o.platform]; !ok {
		return image.Build{}, fmt.Errorf("--platform: unknown platform %q; use qemu, metal, aws, gcp, azure or openstack", o.platform)
	}
	formats, err := image.ParseFormats(o.formats)
	return image.Build{Platform: o.platform, Formats: formats, Options: image.FormatOptions{Compress: o.compress}, Only: only, MemberSlots: o.memberSlots}, err
}

// withoutOut marks a verb that reads no output directory (init writes
// --config's path, lan and snapshot status take theirs as arguments): the
// root's --out is refused there as an unknown flag, as before it was
// shared, rather than accepted and ignored.
func withoutOut(c *cobra.Command) *cobra.Command {
	c.PreRunE = func(cmd *cobra.Command, _ []string) error {
		if cmd.Flags().Changed("out") {
			return usageError{fmt.Errorf("unknown flag: --out (%s reads no output directory)", cmd.CommandPath())}
		}
		return nil
	}
	return c
}
