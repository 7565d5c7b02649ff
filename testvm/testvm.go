// Package testvm boots member images in QEMU, for `etcdimg up` and the
// end-to-end tests: UEFI (OVMF from Debian's ovmf package), the OS disk
// attached read-only (or read-write, for a machine that owns its copy), a
// data disk created blank when missing, the serial
// console captured to a file, the member's ports forwarded to loopback on
// the host, an optional Ignition config through fw_cfg, and a QMP socket
// for ACPI power-off.
//
// The QEMU command line is built from Options, never pasted together from
// strings a caller supplies. Every VM is stopped by its PID.
package testvm

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// AccelEnv forces the accelerator ("kvm" or "tcg") when set.
const AccelEnv = "ETCDIMG_ACCEL"

// Firmware paths of Debian's ovmf package: its 2 MiB build, without
// Secure Boot, which under TCG reaches the boot option about 0.8 s sooner
// than the 4 MiB build with its larger variable store (measured; the
// images boot on either, and on any UEFI firmware).
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS.fd"
)

// Forward maps 127.0.0.1:Host on the host to the guest's GuestPort.
type Forward struct {
	Host, Guest int
}

// Options describe one VM.
type Options struct {
	Name     string // for messages and file names
	Dir      string // the VM's working directory: console, NVRAM, QMP socket
	Image    string // the OS disk, attached read-only unless Writable
	DataDisk string // created blank and sparse when missing
	DataSize int64  // size of a new data disk; default 1 GiB
	MemoryMB int    // default 512
	CPUs     int    // default 1
	Accel    string // "kvm", "tcg", or "" for $ETCDIMG_ACCEL, else KVM when /dev/kvm opens
	Config   string // a file passed as fw_cfg opt/com.coreos/config, or ""

	// User-mode networking: the guest at GuestIP in Network, QEMU's host
	// side at HostIP, Forwards from loopback to GuestIP.
	Network  netip.Prefix
	HostIP   netip.Addr
	GuestIP  netip.Addr
	Forwards []Forward

	// LAN, when set, is the unix socket of a Switch: the guest's one NIC
	// is then on the members' shared segment instead of a user-mode
	// network of its own, and the host reaches it through a Gateway.
	LAN string

	// Cloud-like machines. DHCP makes QEMU's user-mode network hand
	// GuestIP out by DHCP and lets the guest reach any address the host
	// reaches (a metadata service, say): only for a host side that is a
	// network namespace of the test's own.
	DHCP bool
	// ImageFormat is the OS disk's format as QEMU names it (default raw).
	ImageFormat string
	// Bus is "virtio" (the default), "nvme" (as on AWS Nitro) or "scsi"
	// (virtio-scsi, as on GCP), for both the OS and the data disk.
	Bus string
	// ExtraDisks are attached read-only as raw virtio disks after the
	// data disk (an OpenStack config drive, say).
	ExtraDisks []string
	// RTCBase, when set, starts the guest's hardware clock at this date
	// (2006-01-02) instead of now: a machine whose clock is wrong.
	RTCBase string

	// Writable attaches Image read-write, on every bus: for a machine
	// that owns its OS disk and writes it (systemd-boot's boot counting
	// renames its entries at every boot; the node writes new boot slots).
	// Without it the image is never written, so that machines can share
	// one.
	Writable bool
	// Reboot lets a guest's reboot reset the machine, as on hardware,
	// instead of ending QEMU (MachineArgs' -no-reboot); a guest's
	// power-off still ends QEMU.
	Reboot bool
}

// VM is one running QEMU.
type VM struct {
	Opts    Options
	Console string // path of the serial console log
	qmp     string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// ResolveAccel picks the accelerator: the argument, else $ETCDIMG_ACCEL,
// else KVM when it works here, else TCG.
func ResolveAccel(accel string) (string, error) {
	if accel == "" {
		accel = os.Getenv(AccelEnv)
	}
	switch accel {
	case "kvm", "tcg":
		return accel, nil
	case "":
		if KVMWorks() {
			return "kvm", nil
		}
		return "tcg", nil
	}
	return "", fmt.Errorf("accelerator %q: use kvm or tcg (or set %s)", accel, AccelEnv)
}

// KVMWorks reports whether QEMU can run a guest under KVM here, with the
// machine and CPU a member uses. /dev/kvm opening is not enough: under
// nested virtualisation it opens and QEMU then aborts on the first MSR
// it sets. So it boots a 7-byte boot sector that writes 0x2a to the
// isa-debug-exit port, which makes QEMU exit with status 85; anything
// else, within 10 s, is a no.
func KVMWorks() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	dir, err := os.MkdirTemp("", "etcdimg-kvm-probe-")
	if err != nil {
		return false
	}
	defer os.RemoveAll(dir)
	sector := make([]byte, 512)
	copy(sector, []byte{0xB0, 0x2A, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD}) // mov al,0x2a; out 0xf4,al; hlt; jmp $-1
	sector[510], sector[511] = 0x55, 0xAA
	img := filepath.Join(dir, "probe.img")
	if os.WriteFile(img, sector, 0o600) != nil {
		return false
	}
	cmd := exec.Command("qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "16",
		"-nodefaults", "-display", "none", "-no-reboot", "-serial", "none",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-drive", "file="+img+",format=raw,if=floppy")
	if err := cmd.Start(); err != nil {
		return false
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		return errors.As(err, &ee) && ee.ExitCode() == 85
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		return false
	}
}

// MachineArgs are the QEMU arguments of the machine every member runs
// on: a q35 PC with accel ("kvm" or "tcg"), memoryMB of RAM and cpus
// vCPUs, no default devices, no display, and an exit instead of a reboot
// (Options.Reboot drops that). The boot benchmark's floors run on the
// same machine.
//
// Under TCG the CPU is QEMU's "max" without ERMS and FSRM: with them the
// kernel copies and clears pages, and Go moves memory, with REP MOVSB and
// REP STOSB, which TCG runs a byte per iteration, against 8 bytes for
// the REP MOVSQ/STOSQ used without them. Unpacking an 11 MiB initramfs
// (QEMU loading the kernel) cost 0.57 s with them and 0.34 s without
// (best of 6 each, against the trivial initramfs).
func MachineArgs(accel string, memoryMB, cpus int) []string {
	return machineArgs(accel, memoryMB, cpus, false)
}

func machineArgs(accel string, memoryMB, cpus int, reboot bool) []string {
	cpu, acc := "max,erms=off,fsrm=off", "tcg,tb-size=64"
	if accel == "kvm" {
		cpu, acc = "host", "kvm"
	}
	args := []string{
		"-machine", "q35",
		// TCG's translation cache defaults to 1 GiB of host memory; 64 MiB
		// holds a member's working set.
		"-accel", acc,
		"-cpu", cpu,
		"-m", strconv.Itoa(memoryMB),
		"-smp", strconv.Itoa(cpus),
		"-nodefaults", "-no-user-config", "-display", "none",
	}
	if !reboot {
		args = append(args, "-no-reboot")
	}
	return args
}

// FirmwareArgs attach OVMF with its code and its variable store both
// read-only. OVMF then keeps its variables in RAM for the boot, as on a
// machine whose NVRAM starts blank every time; the appliance stores
// nothing in UEFI variables (the UKI is the removable-media loader).
// A writable store costs more than it keeps: every variable OVMF writes
// is emulated flash programming, about 18,000 sector writes by QEMU on a
// blank store, 1.1 s of a first boot under TCG, and the same
// boot with the store kept from the boot before is no faster than with
// a read-only one (measured, best of 3 interleaved).
func FirmwareArgs() []string {
	return []string{
		"-drive", "if=pflash,format=raw,readonly=on,file=" + OVMFCode,
		"-drive", "if=pflash,format=raw,readonly=on,file=" + OVMFVars,
	}
}

// Args returns QEMU's arguments for o (after defaults are applied).
func (o Options) Args(consolePath, qmpPath string) []string {
	user := fmt.Sprintf("user,id=host0,net=%s,host=%s,restrict=on,ipv6=off", o.Network, o.HostIP)
	if o.DHCP {
		user = fmt.Sprintf("user,id=host0,net=%s,host=%s,dhcpstart=%s,restrict=off,ipv6=off", o.Network, o.HostIP, o.GuestIP)
	}
	for _, f := range o.Forwards {
		user += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-%s:%d", f.Host, o.GuestIP, f.Guest)
	}
	// romfile= keeps the NIC's iPXE option ROM out of the firmware: the
	// appliance never boots from the network, and under TCG loading the
	// ROM's drivers cost OVMF 0.6-0.9 s per boot (measured).
	nic := []string{"-netdev", user, "-device", "virtio-net-pci,romfile=,netdev=host0,mac=" + o.MAC()}
	if o.LAN != "" {
		nic = []string{
			"-netdev", "stream,id=lan0,server=off,addr.type=unix,addr.path=" + o.LAN,
			"-device", "virtio-net-pci,romfile=,netdev=lan0,mac=" + o.MAC(),
		}
	}
	args := append([]string{"-name", o.Name}, machineArgs(o.Accel, o.MemoryMB, o.CPUs, o.Reboot)...)
	args = append(args, FirmwareArgs()...)
	args = append(args, o.diskArgs()...)
	args = append(args, nic...)
	args = append(args,
		"-device", "virtio-rng-pci",
		"-serial", "file:"+consolePath,
		"-qmp", "unix:"+qmpPath+",server=on,wait=off",
	)
	if o.RTCBase != "" {
		args = append(args, "-rtc", "base="+o.RTCBase)
	}
	if o.Config != "" {
		args = append(args, "-fw_cfg", "name=opt/com.coreos/config,file="+o.Config)
	}
	return args
}

// diskArgs attach the OS disk (read-only unless Writable: machines may
// share an image), the data disk and any extra disks.
func (o Options) diskArgs() []string {
	format := o.ImageFormat
	if format == "" {
		format = "raw"
	}
	readonly := "readonly=on,"
	if o.Writable {
		readonly = ""
	}
	if o.Bus == "scsi" {
		return []string{
			"-device", "virtio-scsi-pci,id=scsi0",
			"-drive", "if=none,id=osdisk," + readonly + "format=" + format + ",file=" + o.Image,
			"-device", "scsi-hd,drive=osdisk,bus=scsi0.0",
			"-drive", "if=none,id=datadisk,format=raw,file=" + o.DataDisk,
			"-device", "scsi-hd,drive=datadisk,bus=scsi0.0",
		}
	}
	if o.Bus == "nvme" {
		// QEMU's NVMe controller needs a writable drive: unless Writable,
		// the OS disk gets a temporary overlay instead, and the image is
		// never written.
		overlay := "snapshot=on,"
		if o.Writable {
			overlay = ""
		}
		return []string{
			"-drive", "if=none,id=osdisk," + overlay + "format=" + format + ",file=" + o.Image,
			"-device", "nvme,drive=osdisk,serial=etcdimg-os",
			"-drive", "if=none,id=datadisk,format=raw,file=" + o.DataDisk,
			"-device", "nvme,drive=datadisk,serial=etcdimg-data",
		}
	}
	args := []string{
		"-drive", "if=virtio,format=" + format + "," + readonly + "file=" + o.Image,
		"-drive", "if=virtio,format=raw,file=" + o.DataDisk,
	}
	for _, d := range o.ExtraDisks {
		args = append(args, "-drive", "if=virtio,format=raw,readonly=on,file="+d)
	}
	return args
}

// MAC is the guest NIC's address, derived from its IP so that every
// member on the LAN has its own: 52:54:00 (QEMU's prefix) and the IP's
// last three bytes.
func (o Options) MAC() string {
	a := o.GuestIP.As4()
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", a[1], a[2], a[3])
}

// Start boots the VM.
func Start(o Options) (*VM, error) {
	if o.MemoryMB == 0 {
		o.MemoryMB = 512
	}
	if o.CPUs == 0 {
		o.CPUs = 1
	}
	if o.DataSize == 0 {
		o.DataSize = 1 << 30
	}
	var err error
	if o.Accel, err = ResolveAccel(o.Accel); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("testvm: %w", err)
	}
	if _, err := os.Stat(o.DataDisk); errors.Is(err, os.ErrNotExist) {
		if err := createSparse(o.DataDisk, o.DataSize); err != nil {
			return nil, fmt.Errorf("testvm: data disk: %w", err)
		}
	}
	if _, err := os.Stat(OVMFVars); err != nil {
		return nil, fmt.Errorf("testvm: OVMF variables (install Debian's ovmf): %w", err)
	}
	v := &VM{
		Opts:    o,
		Console: filepath.Join(o.Dir, o.Name+"-console.log"),
		qmp:     filepath.Join(o.Dir, o.Name+".qmp"),
		done:    make(chan struct{}),
	}
	os.Remove(v.Console)
	os.Remove(v.qmp)
	v.cmd = exec.Command("qemu-system-x86_64", o.Args(v.Console, v.qmp)...)
	qlog, err := os.Create(filepath.Join(o.Dir, o.Name+"-qemu.log"))
	if err != nil {
		return nil, fmt.Errorf("testvm: %w", err)
	}
	v.cmd.Stdout, v.cmd.Stderr = qlog, qlog
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := v.cmd.Start(); err != nil {
		qlog.Close()
		return nil, fmt.Errorf("testvm: start qemu (install Debian's qemu-system-x86): %w", err)
	}
	go func() {
		v.waitErr = v.cmd.Wait()
		qlog.Close()
		close(v.done)
	}()
	return v, nil
}

// PID is QEMU's process ID.
func (v *VM) PID() int { return v.cmd.Process.Pid }

// Process is QEMU's PID and exact command line, for a state file.
func (v *VM) Process() Process { return Process{PID: v.PID(), Args: slices.Clone(v.cmd.Args)} }

// CommandLine is the QEMU invocation, to reproduce a run by hand.
func (v *VM) CommandLine() string { return strings.Join(v.cmd.Args, " ") }

// Exited reports whether QEMU has exited.
func (v *VM) Exited() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
}

// WaitConsole waits until the console shows pattern, QEMU exits, or
// timeout passes. Errors carry the console's tail.
func (v *VM) WaitConsole(pattern string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(v.Console)
		if strings.Contains(string(b), pattern) {
			return nil
		}
		if v.Exited() {
			return fmt.Errorf("%s: QEMU exited (%v) before the console showed %q; console tail:\n%s", v.Opts.Name, v.waitErr, pattern, v.Tail(40))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: console did not show %q within %s; console tail:\n%s", v.Opts.Name, pattern, timeout, v.Tail(40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Tail returns the last n lines of the console.
func (v *VM) Tail(n int) string { return TailFile(v.Console, n) }

// TailFile returns the last n lines of a log file ("" if unreadable).
func TailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Powerdown presses the ACPI power button through QMP.
func (v *VM) Powerdown() error {
	return QMP(v.qmp, "system_powerdown")
}

// QMPPath is the VM's QMP socket.
func (v *VM) QMPPath() string { return v.qmp }

// CtrlAltDel presses Ctrl-Alt-Del on the guest's keyboard.
func (v *VM) CtrlAltDel() error {
	keys := []map[string]string{{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"}}
	return QMPArgs(v.qmp, "send-key", map[string]any{"keys": keys})
}

// QMP runs one command on the QMP socket at path.
func QMP(path, cmd string) error { return QMPArgs(path, cmd, nil) }

// QMPArgs runs one command with arguments on the QMP socket at path.
func QMPArgs(path, cmd string, args any) error {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return fmt.Errorf("testvm: qmp: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadBytes('\n'); err != nil { // greeting
		return fmt.Errorf("testvm: qmp greeting: %w", err)
	}
	for _, ex := range []string{"qmp_capabilities", cmd} {
		msg := map[string]any{"execute": ex}
		if ex == cmd && args != nil {
			msg["arguments"] = args
		}
		req, _ := json.Marshal(msg)
		if _, err := c.Write(append(req, '\n')); err != nil {
			return fmt.Errorf("testvm: qmp %s: %w", ex, err)
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return fmt.Errorf("testvm: qmp %s: %w", ex, err)
			}
			var resp struct {
				Return json.RawMessage `json:"return"`
				Error  *struct {
					Desc string `json:"desc"`
				} `json:"error"`
			}
			if json.Unmarshal(line, &resp) != nil {
				continue
			}
			if resp.Error != nil {
				return fmt.Errorf("testvm: qmp %s: %s", ex, resp.Error.Desc)
			}
			if resp.Return != nil {
				break
			}
		}
	}
	return nil
}

// Wait waits for QEMU to exit, at most timeout.
func (v *VM) Wait(timeout time.Duration) error {
	select {
	case <-v.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s: QEMU (pid %d) still running after %s; console tail:\n%s", v.Opts.Name, v.PID(), timeout, v.Tail(20))
	}
}

// Kill ends QEMU by its PID at once.
func (v *VM) Kill() {
	if v.Exited() {
		return
	}
	syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
	<-v.done
}

// Shutdown presses the power button and waits for the guest to power
// off; after timeout, or if QMP fails, it kills QEMU. It returns what went
// wrong, if anything.
func (v *VM) Shutdown(timeout time.Duration) error {
	if v.Exited() {
		return nil
	}
	if err := v.Powerdown(); err != nil {
		v.Kill()
		return err
	}
	if err := v.Wait(timeout); err != nil {
		v.Kill()
		return err
	}
	return nil
}

// Alive reports whether pid is a running process (a zombie is not).
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || (b[i+2] != 'Z' && b[i+2] != 'X')
}

// Process is a process started by this package, as recorded in a state
// file: its PID and the exact command line it was started with. A PID
// alone can be reused; the pair cannot be mistaken for another process,
// so a stale record never signals a stranger.
type Process struct {
	PID  int      `json:"pid"`
	Args []string `json:"args"`
}

// Running reports whether p's PID is alive and runs exactly p's command
// line.
func (p Process) Running() bool {
	if p.PID <= 0 || len(p.Args) == 0 || !Alive(p.PID) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
	if err != nil {
		return false
	}
	got := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	return slices.Equal(got, p.Args)
}

// Signal sends sig to p if it is still the process recorded.
func (p Process) Signal(sig syscall.Signal) bool {
	if !p.Running() {
		return false
	}
	return syscall.Kill(p.PID, sig) == nil
}

// Stop sends SIGTERM, waits up to timeout, then SIGKILL. It reports
// whether p was running.
func (p Process) Stop(timeout time.Duration) bool {
	if !p.Signal(syscall.SIGTERM) {
		return false
	}
	if !WaitGone(p.PID, timeout) {
		p.Signal(syscall.SIGKILL)
		WaitGone(p.PID, 10*time.Second)
	}
	return true
}

// WaitGone waits until pid is no longer alive, at most timeout.
func WaitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for Alive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return true
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func createSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
