package main

import (
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// runUpgrade runs `etcdimg upgrade ARGS` against an output directory
// that does not exist.
func runUpgrade(t *testing.T, args ...string) error {
	t.Helper()
	return runSlotCommand(t, []string{"upgrade"}, args...)
}

// runSlotCommand runs `etcdimg COMMAND ARGS` (upgrade, rotate certs,
// rotate ca) against an output directory that does not exist.
func runSlotCommand(t *testing.T, command []string, args ...string) error {
	t.Helper()
	root := &cobra.Command{Use: "etcdimg", SilenceUsage: true, SilenceErrors: true}
	var a app
	a.register(root)
	root.AddCommand(upgradeCmd(&a), rotateCmd(&a))
	root.SetOut(io.Discard)
	root.SetErr(io.Discard)
	root.SetArgs(append(append(command, "--out", filepath.Join(t.TempDir(), "none")), args...))
	return root.Execute()
}

// TestRotationsTakeThePlatform: the rotations install slots as upgrade
// does, so they take --platform and --full (a metal or cloud member
// refuses a qemu slot, and the rotations once always built qemu's).
func TestRotationsTakeThePlatform(t *testing.T) {
	for _, command := range [][]string{{"rotate", "certs"}, {"rotate", "ca"}} {
		for _, platform := range []string{"metal", "aws"} {
			err := runSlotCommand(t, command, "--platform", platform, "--full")
			var ue usageError
			if err == nil || errors.As(err, &ue) || strings.Contains(err.Error(), "flag") || strings.Contains(err.Error(), "platform") {
				t.Errorf("%v --platform %s --full: %v, want it past the flags to the missing output directory", command, platform, err)
			}
		}
		err := runSlotCommand(t, command, "--platform", "vmware")
		if err == nil || err.Error() != `--platform: unknown platform "vmware"; use qemu, metal, aws, gcp, azure or openstack` {
			t.Errorf("%v --platform vmware: %v", command, err)
		}
	}
}

// TestUpgradeTakesEveryPlatform: upgrade takes the cloud platforms (each
// member gets its own slot for the platform) as it takes qemu and metal;
// an unknown platform is refused in one line naming the flag and the
// valid values, before anything is read.
func TestUpgradeTakesEveryPlatform(t *testing.T) {
	for _, tc := range []struct {
		platform string
		refused  bool
	}{
		{"qemu", false}, {"metal", false},
		{"aws", false}, {"gcp", false}, {"azure", false}, {"openstack", false},
		{"vmware", true}, {"", true},
	} {
		err := runUpgrade(t, "--platform", tc.platform)
		var ue usageError
		refused := errors.As(err, &ue) && strings.Contains(err.Error(), "--platform")
		if refused != tc.refused {
			t.Errorf("--platform %q: %v", tc.platform, err)
			continue
		}
		if tc.refused && (err.Error() != `--platform: unknown platform "`+tc.platform+`"; use qemu, metal, aws, gcp, azure or openstack`) {
			t.Errorf("--platform %q: %q", tc.platform, err)
		}
		// Taken, it goes on to the cluster, which is not there.
		if !tc.refused && (errors.As(err, &ue) || err == nil || strings.Contains(err.Error(), "platform")) {
			t.Errorf("--platform %q: %v, want it past the flags to the missing output directory", tc.platform, err)
		}
	}
}

// TestUpgradesBuildOnACloudIsEachMembersOwn: the build upgrade asks for
// on a cloud writes each member's slot, not the generic image; `build`'s
// own stays the generic image.
func TestUpgradesBuildOnACloudIsEachMembersOwn(t *testing.T) {
	for _, tc := range []struct {
		of        outputFlags
		wantCloud bool
	}{
		{outputFlags{formats: "raw", platform: "aws"}, true},
		{outputFlags{formats: "raw", platform: "aws", memberSlots: true}, false},
		{outputFlags{formats: "raw", platform: "openstack", memberSlots: true}, false},
		{outputFlags{formats: "raw", platform: "metal", memberSlots: true}, false},
	} {
		b, err := tc.of.build(nil)
		if err != nil {
			t.Fatal(err)
		}
		if b.Cloud() != tc.wantCloud || b.MemberSlots != tc.of.memberSlots || b.Platform != tc.of.platform {
			t.Errorf("%+v: build %+v, cloud %v", tc.of, b, b.Cloud())
		}
	}
}
