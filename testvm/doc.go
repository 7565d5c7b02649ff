// Package testvm will boot member images in QEMU for `etcdimg up` and the
// end-to-end tests: a virtual LAN between members, host access to each
// member's ports, a serial console captured per member. (A later issue
// builds it.)
package testvm
