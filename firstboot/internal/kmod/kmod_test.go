package kmod

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"etcdimg/image"
	"etcdimg/image/deb"
)

// TestModulesForTheMachinesDevices: with the real kernel's modules and
// aliases, a QEMU q35 member (virtio disks and NIC, fw_cfg, the ACPI
// power button) gets its drivers and not the cloud ones; an AWS Nitro
// machine gets ENA, Azure the Hyper-V drivers; devices behind virtio_pci count only once
// it has created them (the second round).
func TestModulesForTheMachinesDevices(t *testing.T) {
	cache := os.Getenv(deb.CacheEnv)
	if cache == "" {
		cache = filepath.Join("..", "..", "..", ".cache", "deb")
	}
	kdeb, err := deb.FindVerified(cache, deb.Kernel)
	if err != nil {
		t.Fatalf("%v (run `make deps`)", err)
	}
	k, err := image.ReadKernel(kdeb)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := k.LoadOrder(image.ApplianceModules)
	if err != nil {
		t.Fatal(err)
	}
	s := moduleSet{aliases: map[string][]string{}, deps: map[string][]string{}}
	for _, m := range mods {
		s.order = append(s.order, m.Name+".ko")
		s.aliases[m.Name+".ko"] = m.Aliases
		for _, d := range m.Depends {
			s.deps[m.Name+".ko"] = append(s.deps[m.Name+".ko"], d+".ko")
		}
	}
	qemuPCI := []string{
		"pci:v00008086d000029C0sv00001AF4sd00001100bc06sc00i00", // q35 host bridge
		"pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", // virtio-net
		"pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00", // virtio-blk
		"pci:v00001AF4d00001005sv00001AF4sd00000004bc00scFFi00", // virtio-rng
		"acpi:LNXPWRBN:", "acpi:QEMU0002:", "acpi:PNP0A08:PNP0A03:",
	}
	qemuVirtio := append(slices.Clone(qemuPCI), "virtio:d00000001v00001AF4", "virtio:d00000002v00001AF4", "virtio:d00000004v00001AF4")
	aws := []string{
		"pci:v00001D0Fd00008061sv00001D0Fsd00008061bc01sc08i02", // EBS NVMe
		"pci:v00001D0Fd0000EC20sv00001D0Fsd0000EC20bc02sc00i00", // ENA
		"acpi:LNXPWRBN:",
	}
	always := []string{"vfat.ko", "nls_utf8.ko", "evdev.ko", "sd_mod.ko", "sr_mod.ko", "isofs.ko"}
	for _, c := range []struct {
		name      string
		present   []string
		want, not []string
	}{
		{"QEMU, first round", qemuPCI, append([]string{"virtio_pci.ko", "button.ko", "qemu_fw_cfg.ko"}, always...),
			[]string{"virtio_blk.ko", "virtio_net.ko", "ena.ko", "gve.ko", "hv_vmbus.ko", "hv_storvsc.ko", "hv_netvsc.ko", "hv_utils.ko", "virtio_scsi.ko"}},
		{"QEMU, after virtio_pci", qemuVirtio, []string{"virtio_blk.ko", "virtio_net.ko", "virtio_rng.ko", "net_failover.ko"},
			[]string{"ena.ko", "virtio_scsi.ko", "hv_netvsc.ko"}},
		{"AWS Nitro (NVMe is built into the kernel)", aws, []string{"ena.ko", "button.ko", "sd_mod.ko"}, []string{"virtio_pci.ko", "virtio_blk.ko", "gve.ko", "hv_vmbus.ko", "hv_storvsc.ko"}},
		{"Azure", []string{"acpi:VMBUS:", "acpi:LNXPWRBN:"}, []string{"hv_vmbus.ko", "hv_storvsc.ko", "hv_netvsc.ko", "hv_utils.ko"}, []string{"virtio_pci.ko", "ena.ko"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := s.wanted(c.present)
			for _, m := range c.want {
				if !got[m] {
					t.Errorf("%s not loaded", m)
				}
			}
			for _, m := range c.not {
				if got[m] {
					t.Errorf("%s loaded, but no device needs it", m)
				}
			}
		})
	}
}
