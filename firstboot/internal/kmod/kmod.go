// Package kmod loads the kernel modules a machine needs from the
// initramfs: the image's modules with the load order, aliases and
// dependencies the builder wrote (package layout names the files), matched
// against the devices the kernel found.
package kmod

import (
	"errors"
	"etcdimg/internal/layout"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// The image carries the modules of every platform it may boot on (NVMe,
// ENA and gVNIC for AWS and GCP, Hyper-V for Azure); loading all of them
// on every boot cost a TCG boot half a second. A module that drives a
// device (it has an alias on a bus enumerated at boot: PCI, ACPI,
// virtio) is loaded only when such a device is present, the way udev
// would; devices behind a newly loaded driver (virtio devices behind
// virtio_pci) are looked for again. Modules without such an alias (file
// systems, input handlers, the SCSI disk and CD-ROM drivers, whose
// devices appear asynchronously) are always loaded, unless they serve a
// controller that is not here (Hyper-V's vmbus drivers without the
// vmbus); a library only others depend on (scsi_mod) is loaded with its
// dependents. A module whose dependency is not loaded is not tried.
var deviceBuses = []string{"pci:", "acpi", "virtio:"}

// moduleSet is what the image says about its modules.
type moduleSet struct {
	order   []string            // NAME.ko, dependencies first
	aliases map[string][]string // NAME.ko → device patterns
	deps    map[string][]string // NAME.ko → NAME.ko of its dependencies
}

func readModuleSet() (moduleSet, error) {
	s := moduleSet{aliases: map[string][]string{}, deps: map[string][]string{}}
	list, err := os.ReadFile(layout.ModuleOrder)
	if err != nil {
		return s, fmt.Errorf("read %s: %w", layout.ModuleOrder, err)
	}
	s.order = strings.Fields(string(list))
	// Images built before the alias and dependency lists load every
	// module, as before.
	if b, err := os.ReadFile(layout.ModuleAliases); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "alias" {
				s.aliases[f[2]+".ko"] = append(s.aliases[f[2]+".ko"], f[1])
			}
		}
	}
	if b, err := os.ReadFile(layout.ModuleDeps); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if name, d, ok := strings.Cut(line, ":"); ok {
				s.deps[name] = strings.Fields(d)
			}
		}
	}
	return s, nil
}

// deviceBound reports whether module m drives a device of a bus
// enumerated at boot, and so is loaded only for a present device.
func (s moduleSet) deviceBound(m string) bool {
	for _, a := range s.aliases[m] {
		for _, bus := range deviceBuses {
			if strings.HasPrefix(a, bus) {
				return true
			}
		}
	}
	return false
}

// wanted returns the modules to load for the devices with modaliases
// present: the always-loaded ones, the device-bound ones matching a
// device, and their dependencies.
func (s moduleSet) wanted(present []string) map[string]bool {
	dependedOn := map[string]bool{}
	for _, d := range s.deps {
		for _, x := range d {
			dependedOn[x] = true
		}
	}
	want := map[string]bool{}
	var add func(m string)
	add = func(m string) {
		if want[m] {
			return
		}
		want[m] = true
		for _, d := range s.deps[m] {
			add(d)
		}
	}
	matched := map[string]bool{}
	for _, m := range s.order {
		if s.deviceBound(m) && matchesAny(s.aliases[m], present) {
			matched[m] = true
			add(m)
		}
	}
	for _, m := range s.order {
		switch {
		case s.deviceBound(m):
		case dependedOn[m] && len(s.aliases[m]) == 0:
			// a library: loaded with what needs it
		case slices.ContainsFunc(s.deps[m], func(d string) bool { return s.deviceBound(d) && !matched[d] }):
			// it serves a bus whose controller is not here (Hyper-V's
			// vmbus drivers without the vmbus)
		default:
			add(m)
		}
	}
	return want
}

func matchesAny(patterns, present []string) bool {
	for _, p := range patterns {
		for _, d := range present {
			if ok, _ := path.Match(p, d); ok {
				return true
			}
		}
	}
	return false
}

// modaliases are the modaliases of the devices on the buses modules are
// matched against.
func modaliases() []string {
	var out []string
	for _, bus := range []string{"pci", "acpi", "virtio", "platform"} {
		files, _ := filepath.Glob(filepath.Join("/sys/bus", bus, "devices", "*", "modalias"))
		for _, f := range files {
			if b, err := os.ReadFile(f); err == nil {
				out = append(out, strings.TrimSpace(string(b)))
			}
		}
	}
	return out
}

// Load loads the modules this machine needs, in the image's load
// order, looking for devices again after each round that loaded a
// driver. A module that fails (say, a cloud NIC driver on QEMU) is
// reported and skipped: only what the boot then lacks stops it.
func Load() (string, error) {
	s, err := readModuleSet()
	if err != nil {
		return "", err
	}
	all := len(s.aliases) == 0 && len(s.deps) == 0
	done := map[string]error{}
	for round := 0; round < 4; round++ {
		want := map[string]bool{}
		if all {
			for _, m := range s.order {
				want[m] = true
			}
		} else {
			want = s.wanted(modaliases())
		}
		progress := false
		for _, m := range s.order {
			if _, tried := done[m]; tried || !want[m] {
				continue
			}
			if d := s.failedDep(m, done); d != "" {
				done[m] = fmt.Errorf("needs %s, not loaded", d)
				continue
			}
			done[m] = loadModule(filepath.Join(layout.ModuleDir, m))
			progress = progress || done[m] == nil
		}
		if !progress || all {
			break
		}
	}
	loaded, skipped := 0, []string{}
	for _, m := range s.order {
		err, tried := done[m]
		switch {
		case !tried:
		case err == nil:
			loaded++
		default:
			skipped = append(skipped, fmt.Sprintf("%s (%v)", m, err))
		}
	}
	detail := fmt.Sprintf("%d loaded, %d not needed on this machine", loaded, len(s.order)-len(done))
	if len(skipped) > 0 {
		detail += ", skipped: " + strings.Join(skipped, ", ")
	}
	return detail, nil
}

// failedDep names a dependency of m that was tried and failed, or that
// is in the image but was not loaded.
func (s moduleSet) failedDep(m string, done map[string]error) string {
	for _, d := range s.deps[m] {
		if !slices.Contains(s.order, d) {
			continue // built into the kernel
		}
		if err, tried := done[d]; !tried || err != nil {
			return d
		}
	}
	return ""
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}
