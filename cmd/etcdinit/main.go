// Command etcdinit is the initramfs's /init: it loads the machine's
// modules, mounts the EFI system partition read-only and runs the node
// binary (cmd/etcdnode) from it. See package preinit.
package main

import "etcdimg/firstboot/preinit"

func main() { preinit.Main() }
