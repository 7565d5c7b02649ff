// Package firstboot is the appliance's PID 1 (the node binary's init):
// the boot as a declared list of named steps over one state struct
// (bootSteps in boot.go), each printed as one console line with its
// duration; the config's application to the RAM root (Apply) and its
// units, run under a supervisor that restarts them with backoff and
// reaps orphans; and the end of every boot, a clean power-off on the
// ACPI button or a signal, with etcd stopped and the data disk synced
// and unmounted. A boot that cannot go on says why on the console and
// waits for the power button, the data disk as it was.
//
// The steps' work lives in subpackages, which never import this one:
// platform (where the config comes from, per platform), network (address,
// DHCP, clock), datadisk (find, format under the disk rule, claim) and
// join (bootstrap, join, restore, promote, auth); internal/ holds the
// guest-only plumbing (block devices, console, kernel file systems,
// modules), preinit the initramfs's /init, backupd the on-node backup
// service.
//
// It reads only what package ignition wrote, through ignition/ign; it
// never reaches the host's packages (spec, pki, ignition itself, image,
// cluster, testvm), as internal/arch's test checks.
package firstboot
