// Package image will assemble a member's bootable disk with go-diskfs: a
// GPT disk whose EFI system partition holds systemd-boot, the kernel, the
// initramfs and the member's Ignition config. It takes what package
// ignition rendered and never sees the CA key. (The next issue builds it.)
package image
