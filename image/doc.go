// Package image assembles a member's bootable disk: a GPT disk whose one
// partition, the EFI system partition (FAT32), holds a unified kernel
// image as the removable-media loader EFI/BOOT/BOOTX64.EFI (systemd's EFI
// stub with the Debian cloud kernel, the initramfs and the command line:
// the node binary and the modules the appliance needs, nothing else) and
// the member's Ignition config; then writes it in each output format
// (format.go: one writer per format) for a platform (Build).
//
// Images are reproducible: the same inputs give the same bytes. Disk and
// partition GUIDs are derived from the cluster and member names, FAT and
// cpio timestamps are fixed, archive entries are sorted. The CA key is
// never an input. The package takes what render wrote (the configs) as
// values and never renders.
//
// Building every member's raw image for QEMU:
//
//	in, err := image.ResolveInputs(image.Inputs{}) // the package cache and the binaries beside this one
//	if err != nil {
//		return err
//	}
//	boot, err := image.PrepareBoot(in)
//	if err != nil {
//		return err
//	}
//	formats, _ := image.ParseFormats("raw")
//	b := image.Build{Platform: "qemu", Formats: formats}
//	written, err := b.Write(boot, configs) // configs: member name → Ignition JSON
package image
