package image

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"etcdimg/image/deb"
)

// Kernel is what the image takes from Debian's kernel package.
type Kernel struct {
	Version string
	Vmlinuz []byte
	Modules map[string]*Module // by module name (underscores)
	Builtin map[string]bool    // modules compiled into the kernel
}

// Module is one loadable kernel module.
type Module struct {
	Name    string
	Data    []byte
	Depends []string
	// Aliases are the device patterns the module serves (modinfo
	// alias=, as "pci:v00001AF4d*..."), which firstboot matches against
	// the machine's devices.
	Aliases []string
}

// ApplianceModules are the modules the appliance loads, dependencies
// aside: disks, network and entropy on QEMU and the common clouds, fw_cfg
// for the config, the ACPI power button and its input device, and FAT for
// reading the config from the EFI system partition.
var ApplianceModules = []string{
	"virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "virtio_rng",
	"qemu_fw_cfg", "button", "evdev",
	"vfat", "nls_cp437", "nls_ascii", "nls_utf8",
	"sd_mod", "nvme", "ena", "gve",
	"hv_vmbus", "hv_storvsc", "hv_netvsc", "hv_utils",
	"sr_mod", "isofs", "af_packet",
}

// ReadKernel reads the kernel image and its modules from a Debian kernel
// package. It reads the .deb once; modules are kept in memory.
func ReadKernel(debPath string) (*Kernel, error) {
	k := &Kernel{Modules: map[string]*Module{}, Builtin: map[string]bool{}}
	err := deb.Walk(debPath, func(h *tar.Header, name string, r io.Reader) error {
		if h.Typeflag != tar.TypeReg {
			return nil
		}
		switch {
		case strings.HasPrefix(name, "boot/vmlinuz-"):
			k.Version = strings.TrimPrefix(name, "boot/vmlinuz-")
			b, err := io.ReadAll(r)
			k.Vmlinuz = b
			return err
		case strings.HasPrefix(name, "lib/modules/") && strings.HasSuffix(name, "/modules.builtin"):
			b, err := io.ReadAll(r)
			for _, line := range strings.Fields(string(b)) {
				k.Builtin[moduleName(line)] = true
			}
			return err
		case strings.HasPrefix(name, "lib/modules/") && strings.HasSuffix(name, ".ko"):
			b, err := io.ReadAll(r)
			if err != nil {
				return err
			}
			m, err := parseModule(b)
			if err != nil {
				return fmt.Errorf("image: %s: %w", name, err)
			}
			if m.Name == "" {
				m.Name = moduleName(name)
			}
			k.Modules[m.Name] = m
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("image: read kernel package: %w", err)
	}
	if k.Vmlinuz == nil {
		return nil, fmt.Errorf("image: %s holds no boot/vmlinuz-*; pass a Debian linux-image package", debPath)
	}
	return k, nil
}

// moduleName turns a module path into the kernel's name for it:
// .../virtio-rng.ko → virtio_rng.
func moduleName(p string) string {
	return strings.ReplaceAll(strings.TrimSuffix(path.Base(p), ".ko"), "-", "_")
}

// parseModule reads name= and depends= from the module's .modinfo section.
// The Debian package ships no modules.dep (depmod runs at install time),
// so this is where the dependencies are.
func parseModule(data []byte) (*Module, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("no .modinfo section")
	}
	info, err := sec.Data()
	if err != nil {
		return nil, err
	}
	m := &Module{Data: data}
	for _, kv := range bytes.Split(info, []byte{0}) {
		k, v, _ := strings.Cut(string(kv), "=")
		switch k {
		case "name":
			m.Name = v
		case "alias":
			m.Aliases = append(m.Aliases, v)
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d != "" {
					m.Depends = append(m.Depends, d)
				}
			}
		}
	}
	return m, nil
}

// LoadOrder returns want and everything they depend on, each after its
// dependencies, ties broken by name so the order is always the same.
// Modules built into the kernel are left out.
func (k *Kernel) LoadOrder(want []string) ([]*Module, error) {
	var order []*Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, from []string) error
	visit = func(name string, from []string) error {
		if k.Builtin[name] {
			return nil
		}
		switch state[name] {
		case 1:
			return fmt.Errorf("image: module dependency cycle: %s", strings.Join(append(from, name), " → "))
		case 2:
			return nil
		}
		m, ok := k.Modules[name]
		if !ok {
			if len(from) == 0 {
				return fmt.Errorf("image: kernel %s has no module %s", k.Version, name)
			}
			return fmt.Errorf("image: module %s needs %s, which kernel %s does not have", from[len(from)-1], name, k.Version)
		}
		state[name] = 1
		deps := slices.Clone(m.Depends)
		slices.Sort(deps)
		for _, d := range deps {
			if err := visit(d, append(from, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, m)
		return nil
	}
	sorted := slices.Clone(want)
	slices.Sort(sorted)
	for _, w := range sorted {
		if err := visit(w, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
