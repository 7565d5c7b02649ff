package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"etcdimg/image"
	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
	"etcdimg/testvm/local"
)

func stopCmd(a *app) *cobra.Command {
	return memberCmd(a, "stop NAME", "Power one member off (ACPI) and keep its disks", local.StopMember)
}

func startCmd(a *app) *cobra.Command {
	var size spec.Size
	c := memberCmd(a, "start NAME", "Boot one stopped member from its image and data disk", func(dir outdir.Layout, name string) (string, error) {
		return local.StartMember(dir, name, size)
	})
	c.Flags().Var(&size, "data-size", "grow the member's data disk to this size first (sparse; never shrinks); the member grows its file system and backend quota into it at boot")
	return c
}

// memberCmd is a command on one member of the local cluster.
func memberCmd(a *app, use, short string, do func(outdir.Layout, string) (string, error)) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: a.onBuilt(func(cmd *cobra.Command, args []string, b *built) error {
			line, err := do(b.dir, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), line)
			return nil
		}),
	}
}

// lifecycleFlags are what replace and roll share.
type lifecycleFlags struct {
	spec    specFlags
	boot    bootFlags
	timeout time.Duration
	// allowOutage accepts a step that leaves fewer voters than a quorum
	// (a one- or two-member cluster), with disks kept only.
	allowOutage bool
	// platform is what upgrade builds for (a key of image.Platforms; on a
	// cloud, each member's own slot); "" is qemu.
	platform string
	// full: upgrade sends every file, even those a member runs already.
	full bool
	// allowDowngrade: upgrade runs etcd's downgrade for images one minor
	// below the cluster's version.
	allowDowngrade bool
}

func (f *lifecycleFlags) register(c *cobra.Command) {
	f.spec.register(c)
	f.boot.register(c)
	c.Flags().DurationVar(&f.timeout, "timeout", 5*time.Minute, "how long a replaced member has to rejoin")
	c.Flags().BoolVar(&f.allowOutage, "allow-outage", false, "with kept disks, accept that a one- or two-member cluster stops taking writes while a member is down")
}

// options are the flags' local.LifecycleOptions: the images are built as
// `build` builds them; prepare, when set, runs after the check and before
// the images are built.
func (f *lifecycleFlags) options(cmd *cobra.Command, prepare func(*spec.Cluster, outdir.Layout) error) (local.LifecycleOptions, error) {
	c, err := f.spec.cluster(cmd)
	return local.LifecycleOptions{
		Cluster: c, Dir: f.spec.dir(), Timeout: f.timeout, AllowOutage: f.allowOutage, Out: cmd.OutOrStdout(), Prepare: prepare,
		Build: func(only []string) (map[string]string, error) {
			var of *outputFlags
			if f.platform != "" {
				of = &outputFlags{formats: "raw", platform: f.platform, memberSlots: true}
			}
			images, err := buildImages(cmd, &f.spec, &f.boot, of, only)
			return images, err
		},
		Interruptible: interruptible,
	}, err
}

// roll is local.Roll with the flags.
func (f *lifecycleFlags) roll(cmd *cobra.Command, keepDisks bool, prepare func(*spec.Cluster, outdir.Layout) error) (int, time.Duration, error) {
	o, err := f.options(cmd, prepare)
	if err != nil {
		return 0, 0, err
	}
	return local.Roll(cmd.Context(), o, keepDisks)
}

// registerUpgrade registers the flags of the commands that install new
// slots (upgrade, rotate certs, rotate ca): the lifecycle's, --platform
// and --full.
func (f *lifecycleFlags) registerUpgrade(c *cobra.Command) {
	f.register(c)
	c.Flags().StringVar(&f.platform, "platform", layout.PlatformQEMU, "the platform the members run: qemu, metal, aws, gcp, azure or openstack (a member refuses a slot built for another; on a cloud each member gets a slot with its own config, built in OUT/images/upgrade/PLATFORM, which it boots from instead of its user-data)")
	c.Flags().BoolVar(&f.full, "full", false, "send every file of each slot, even those the member runs already (by default it copies them from its running slot, checked against the signed manifest)")
}

// checkPlatform refuses an unknown --platform.
func (f *lifecycleFlags) checkPlatform() error {
	if _, ok := image.Platforms[f.platform]; !ok {
		return usageError{fmt.Errorf("--platform: unknown platform %q; use qemu, metal, aws, gcp, azure or openstack", f.platform)}
	}
	return nil
}

// upgradeOptions are options with the slot flags checked and applied.
func (f *lifecycleFlags) upgradeOptions(cmd *cobra.Command, prepare func(*spec.Cluster, outdir.Layout) error) (local.LifecycleOptions, error) {
	if err := f.checkPlatform(); err != nil {
		return local.LifecycleOptions{}, err
	}
	o, err := f.options(cmd, prepare)
	o.Full = f.full
	return o, err
}

// upgrade is local.Upgrade of every member with the flags: prepare, when
// set, runs after the check and before the images are built. It returns
// how many members took a new slot and how long that took.
func (f *lifecycleFlags) upgrade(cmd *cobra.Command, prepare func(*spec.Cluster, outdir.Layout) error) (int, time.Duration, error) {
	o, err := f.upgradeOptions(cmd, prepare)
	if err != nil {
		return 0, 0, err
	}
	done, took, err := local.Upgrade(cmd.Context(), o, nil)
	return len(done), took, err
}

func replaceCmd(a *app) *cobra.Command {
	f := lifecycleFlags{spec: specFlags{app: a}}
	var keepDisk bool
	c := &cobra.Command{
		Use:   "replace NAME",
		Short: "Rebuild NAME's image, power it off, swap its OS disk (and its data disk for a blank one), boot it, wait until it is a voter again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := f.options(cmd, nil)
			if err != nil {
				return err
			}
			took, err := local.Replace(cmd.Context(), o, args[0], keepDisk)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "replaced %s in %.1fs\n", args[0], took.Seconds())
			return nil
		},
	}
	f.register(c)
	c.Flags().BoolVar(&keepDisk, "keep-disk", false, "keep the member's data disk (and its identity) instead of giving it a blank one")
	return c
}

func rollCmd(a *app) *cobra.Command {
	f := lifecycleFlags{spec: specFlags{app: a}}
	var keepDisks bool
	c := &cobra.Command{
		Use:   "roll",
		Short: "Replace every member in turn, followers first, the leader last; refuses unless all are healthy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, took, err := f.roll(cmd, keepDisks, nil)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rolled %d members in %.1fs\n", n, took.Seconds())
			return nil
		},
	}
	f.register(c)
	c.Flags().BoolVar(&keepDisks, "keep-disks", false, "keep every member's data disk instead of giving each a blank one")
	return c
}

func upgradeCmd(a *app) *cobra.Command {
	f := lifecycleFlags{spec: specFlags{app: a}}
	c := &cobra.Command{
		Use:   "upgrade [NAME...]",
		Short: "Rebuild the images and install each member's over its node API into its inactive boot slot, one at a time, followers first; a member that does not come back good rolls back by itself",
		Long: `upgrade rebuilds the images from the current spec and PKI, then, for each
member named (every member when none is), followers first and the leader last
after its leadership moved: checks that every other member is healthy and that
the member's absence keeps a quorum, sends the member's new slot (signed with
the output directory's image-signing key) to its node API, reboots it into the
slot, and waits until the member marks the slot good (a started, caught-up
voter for the spec's upgrade.goodAfter). A member whose new slot does not come
up good reboots until its tries are spent and boots its old slot again; upgrade
stops there, naming it, and leaves the rest untouched. Run again, it skips the
members that run their new image already. It needs nothing from the machines'
platform: the same under 'up' and on machines reached at the spec's addresses.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := f.upgradeOptions(cmd, nil)
			if err != nil {
				return err
			}
			o.AllowDowngrade = f.allowDowngrade
			for _, n := range args {
				if !slices.Contains(o.Cluster.Names(), n) {
					return fmt.Errorf("upgrade: no member %q in the spec; members: %s", n, strings.Join(o.Cluster.Names(), ", "))
				}
			}
			var only []string
			if len(args) > 0 {
				only = args
			}
			done, took, err := local.Upgrade(cmd.Context(), o, only)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "upgraded %d members in %.1fs\n", len(done), took.Seconds())
			return nil
		},
	}
	f.registerUpgrade(c)
	c.Flags().BoolVar(&f.allowDowngrade, "allow-downgrade", false, "accept images whose etcd is one minor below the cluster's version: before any member goes down, run etcd's downgrade (validate, enable, wait until every member's storage version is the older minor's)")
	return c
}
