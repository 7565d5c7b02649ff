package local

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"etcdimg/internal/layout"
	"etcdimg/internal/spec"
	"etcdimg/testvm"
)

// MemberSpec is one member to boot.
type MemberSpec struct {
	Name  string
	IP    netip.Addr
	Image string
}

// Options describe a cluster to boot in QEMU on one virtual LAN.
type Options struct {
	RunDir   string // consoles, NVRAM, sockets, the state file
	DiskDir  string // data disks, kept across down and up
	Network  netip.Prefix
	Reserved []netip.Addr // addresses the LAN must not hand to QEMU's host side (the gateway)
	Members  []MemberSpec
	MemoryMB int
	Accel    string
	// PortBase: member i (from 1) gets PortBase+100i+79 (client), +80
	// (peer), +81 (metrics), +82 (node metrics), +83 (backups) and +84
	// (node API) on the host.
	PortBase int
	DataSize int64 // size of a new data disk
	// SwitchCommand runs the LAN switch as its own process (so that the
	// cluster outlives the command that started it); its last argument
	// is followed by the socket path.
	SwitchCommand []string
	// HostServices are services of the host the members reach at an
	// address of the LAN (an S3 endpoint, say); RelayCommand, followed
	// by the host address, relays one connection over standard input
	// and output.
	HostServices []HostService
	RelayCommand []string
	// Out, when set, is told where a member's old OS disk went when a
	// fresh copy of a changed image replaced it.
	Out io.Writer
}

// HostService maps an address of the LAN that no member has to a TCP
// address of the host.
type HostService struct {
	LAN  netip.AddrPort
	Host string
}

// Ports returns member i's (from 1) client and metrics ports on the host.
func Ports(base, i int) (client, metrics int) {
	return base + 100*i + 79, base + 100*i + 81
}

// NodePorts returns member i's (from 1) node-metrics and backup ports on
// the host.
func NodePorts(base, i int) (nodeMetrics, backup int) {
	return base + 100*i + 82, base + 100*i + 83
}

// PeerPort returns member i's (from 1) peer port on the host: forwarded
// so that the operator (and the tests) can see what the peer port
// accepts; mTLS with a member's certificate still guards it.
func PeerPort(base, i int) int { return base + 100*i + 80 }

// NodeAPIPort returns member i's (from 1) node API port on the host
// (layout.NodeAPIPort: mTLS, the admin and the members only).
func NodeAPIPort(base, i int) int { return base + 100*i + 84 }

// HostPorts returns every host port member i (from 1) forwards: client,
// peer, metrics, node metrics, backup and node API. Boot checks each is
// free before it starts anything.
func HostPorts(base, i int) []int {
	c, m := Ports(base, i)
	nm, b := NodePorts(base, i)
	return []int{c, PeerPort(base, i), m, nm, b, NodeAPIPort(base, i)}
}

// Boot boots every member on one LAN. Each QEMU runs in its own process
// group, so the cluster keeps running when the caller exits. The state
// file is written after every start, so Down can clean up even a partial
// start. The caller holds the run directory's lock.
func Boot(o Options) (*State, error) {
	var err error
	for _, p := range []*string{&o.RunDir, &o.DiskDir} {
		if *p, err = filepath.Abs(*p); err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
	}
	for i := range o.Members {
		if o.Members[i].Image, err = filepath.Abs(o.Members[i].Image); err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
	}
	if st, err := LoadState(o.RunDir); err == nil && len(st.Running()) > 0 {
		return nil, fmt.Errorf("a cluster is already running from %s (%d members); run `etcdimg down` first", filepath.Dir(o.RunDir), len(st.Running()))
	}
	accel, err := testvm.ResolveAccel(o.Accel)
	if err != nil {
		return nil, err
	}
	for i := range o.Members {
		for _, p := range HostPorts(o.PortBase, i+1) {
			if err := portFree(p); err != nil {
				return nil, fmt.Errorf("port %d for %s: %w; stop what uses it or pass another --port-base", p, o.Members[i].Name, err)
			}
		}
	}
	for _, hs := range o.HostServices {
		if !o.Network.Contains(hs.LAN.Addr()) || hs.LAN.Addr() == o.Network.Addr() {
			return nil, fmt.Errorf("host service %s is not an address of the LAN %s", hs.LAN, o.Network)
		}
		for _, m := range o.Members {
			if m.IP == hs.LAN.Addr() {
				return nil, fmt.Errorf("host service %s is %s's address; give it an address no member has", hs.LAN, m.Name)
			}
		}
	}
	gw, err := gatewayAddrs(o)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{o.RunDir, o.DiskDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
	}
	st := &State{
		RunDir: o.RunDir, DiskDir: o.DiskDir,
		Accel: accel, MemoryMB: o.MemoryMB, DataSize: o.DataSize,
		Started:      time.Now().UTC().Truncate(time.Second),
		SwitchSocket: filepath.Join(o.RunDir, "lan.sock"),
	}
	if st.Switch, err = testvm.StartSwitch(o.SwitchCommand, st.SwitchSocket, filepath.Join(o.RunDir, "lan.log")); err != nil {
		return nil, err
	}
	if err := st.save(); err != nil {
		return st, err
	}
	gwOpts := testvm.GatewayOptions{Dir: o.RunDir, LAN: st.SwitchSocket, Network: o.Network, HostIP: gw[0], DNSIP: gw[1]}
	for _, hs := range o.HostServices {
		gwOpts.Guest = append(gwOpts.Guest, testvm.GuestForward{LAN: hs.LAN, Command: strings.Join(append(slices.Clone(o.RelayCommand), hs.Host), " ")})
		if st.HostServices == nil {
			st.HostServices = map[string]string{}
		}
		st.HostServices[hs.LAN.String()] = hs.Host
	}
	for i, m := range o.Members {
		client, metrics := Ports(o.PortBase, i+1)
		nodeMetrics, backup := NodePorts(o.PortBase, i+1)
		gwOpts.Forwards = append(gwOpts.Forwards,
			testvm.GatewayForward{Host: client, Guest: m.IP, Port: layout.ClientPort},
			testvm.GatewayForward{Host: PeerPort(o.PortBase, i+1), Guest: m.IP, Port: layout.PeerPort},
			testvm.GatewayForward{Host: metrics, Guest: m.IP, Port: layout.MetricsPort},
			testvm.GatewayForward{Host: nodeMetrics, Guest: m.IP, Port: layout.NodeMetricsPort},
			testvm.GatewayForward{Host: backup, Guest: m.IP, Port: layout.BackupPort},
			testvm.GatewayForward{Host: NodeAPIPort(o.PortBase, i+1), Guest: m.IP, Port: layout.NodeAPIPort})
	}
	if st.Gateway, err = testvm.StartGateway(gwOpts); err != nil {
		return st, err
	}
	if err := st.save(); err != nil {
		return st, err
	}
	for i, m := range o.Members {
		client, metrics := Ports(o.PortBase, i+1)
		nodeMetrics, backup := NodePorts(o.PortBase, i+1)
		st.Members = append(st.Members, MemberState{
			Name: m.Name, IP: m.IP.String(), Client: client, Peer: PeerPort(o.PortBase, i+1), Metrics: metrics, NodeMetrics: nodeMetrics, Backup: backup,
			NodeAPI: NodeAPIPort(o.PortBase, i+1), Image: m.Image, OSDisk: OSDiskPath(o.DiskDir, m.Name),
			DataDisk: filepath.Join(o.DiskDir, m.Name+"-data.img"),
		})
		// A member boots `up` after `up` from its own OS disk, with the
		// slots it wrote, for as long as its image is the same.
		_, aside, err := prepareOSDisk(st.DiskDir, &st.Members[i], time.Now(), false)
		if aside != "" && o.Out != nil {
			fmt.Fprintf(o.Out, "%s: its image changed; old OS disk kept at %s, a fresh copy replaces it\n", m.Name, aside)
		}
		if err != nil {
			return st, err
		}
		if err := st.boot(&st.Members[i]); err != nil {
			return st, err
		}
	}
	return st, nil
}

// boot starts m's QEMU on the LAN, from m's own OS disk (which it
// writes, and reboots from as a machine does), and records it.
func (st *State) boot(m *MemberState) error {
	vm, err := testvm.Start(testvm.Options{
		Name:     m.Name,
		Dir:      st.RunDir,
		Image:    m.OSDisk,
		Writable: true,
		Reboot:   true,
		DataDisk: m.DataDisk,
		DataSize: st.DataSize,
		MemoryMB: st.MemoryMB,
		Accel:    st.Accel,
		GuestIP:  netip.MustParseAddr(m.IP),
		LAN:      st.SwitchSocket,
	})
	if err != nil {
		return err
	}
	m.QEMU, m.Console, m.QMP = vm.Process(), vm.Console, vm.QMPPath()
	return st.save()
}

// LANUp reports whether the switch and the gateway still run: a member
// can only be started onto a live LAN.
func (st *State) LANUp() bool { return st.Switch.Running() && st.Gateway.Running() }

// powerOff presses m's power button and waits up to timeout for QEMU to
// exit; then, or if QMP fails, it kills QEMU by its PID. It returns a line
// for the operator.
func powerOff(m MemberState, timeout time.Duration) string {
	if !m.Running() {
		return fmt.Sprintf("%s: not running", m.Name)
	}
	start := time.Now()
	if err := testvm.QMP(m.QMP, "system_powerdown"); err != nil {
		killQEMU(m)
		return fmt.Sprintf("%s: power button: %v; killed pid %d", m.Name, err, m.QEMU.PID)
	}
	if testvm.WaitGone(m.QEMU.PID, timeout) {
		return fmt.Sprintf("%s: powered off in %.1fs", m.Name, time.Since(start).Seconds())
	}
	killQEMU(m)
	return fmt.Sprintf("%s: still running after %s; killed pid %d", m.Name, timeout, m.QEMU.PID)
}

// killQEMU ends m's QEMU at once (SIGKILL, as a power cut) and waits up
// to 10 s for it to be gone; it reports whether it was running and is.
func killQEMU(m MemberState) bool {
	return m.QEMU.Signal(syscall.SIGKILL) && testvm.WaitGone(m.QEMU.PID, 10*time.Second)
}

// Kill cuts member name's power: its QEMU is killed, its disks kept as
// the cut left them. The caller holds the lock.
func (st *State) Kill(name string) error {
	m, err := st.Member(name)
	if err != nil {
		return err
	}
	if !killQEMU(*m) {
		return fmt.Errorf("%s: pid %d was not running, or outlived SIGKILL", name, m.QEMU.PID)
	}
	m.QEMU = testvm.Process{}
	return st.save()
}

// MAC is the member's NIC address on the LAN, which testvm derives from
// its IP.
func (m MemberState) MAC() (string, error) {
	ip, err := netip.ParseAddr(m.IP)
	if err != nil {
		return "", fmt.Errorf("%s: address %q: %w", m.Name, m.IP, err)
	}
	return testvm.Options{GuestIP: ip}.MAC(), nil
}

// Stop powers member name off (ACPI) and keeps its disks. The caller
// holds the lock.
func (st *State) Stop(name string, timeout time.Duration) (string, error) {
	m, err := st.Member(name)
	if err != nil {
		return "", err
	}
	line := powerOff(*m, timeout)
	m.QEMU = testvm.Process{}
	return line, st.save()
}

// Start boots member name from its OS disk as it is (a copy of its image
// made first if it has none) and its data disk. The caller holds the
// lock.
func (st *State) Start(name string) error {
	m, err := st.Member(name)
	if err != nil {
		return err
	}
	if m.Running() {
		return fmt.Errorf("%s is already running (pid %d)", name, m.QEMU.PID)
	}
	if !st.LANUp() {
		return fmt.Errorf("the virtual LAN of %s is down; run `etcdimg down` then `etcdimg up`", filepath.Dir(st.RunDir))
	}
	if _, err := os.Lstat(m.OSDisk); m.OSDisk == "" || errors.Is(err, os.ErrNotExist) {
		if _, _, err := prepareOSDisk(st.DiskDir, m, time.Now(), false); err != nil {
			return err
		}
	}
	return st.boot(m)
}

// GrowDataDisk enlarges stopped member name's data disk to size bytes
// (sparse: the new space costs nothing until written); the member grows
// its file system and its quota into it when it boots. A disk is never
// shrunk: a size not larger than the disk's is refused, and nothing
// changes. The caller holds the lock.
func (st *State) GrowDataDisk(name string, size int64) (string, error) {
	m, err := st.Member(name)
	if err != nil {
		return "", err
	}
	if m.Running() {
		return "", fmt.Errorf("--data-size: %s is running (pid %d); `etcdimg stop %s` first", name, m.QEMU.PID, name)
	}
	fi, err := os.Stat(m.DataDisk)
	if err != nil {
		return "", fmt.Errorf("--data-size: %s's data disk: %w", name, err)
	}
	if size <= fi.Size() {
		return "", fmt.Errorf("--data-size %s: %s's data disk is %s already; a data disk only grows, pass a larger size", spec.Size(size), name, spec.Size(fi.Size()))
	}
	if err := os.Truncate(m.DataDisk, size); err != nil {
		return "", fmt.Errorf("--data-size: grow %s: %w", m.DataDisk, err)
	}
	return fmt.Sprintf("%s: data disk %s grown from %s to %s; the member grows its file system and quota into it at boot", name, m.DataDisk, spec.Size(fi.Size()), spec.Size(size)), nil
}

// SetImage makes member name boot from image from its next start.
func (st *State) SetImage(name, image string) error {
	m, err := st.Member(name)
	if err != nil {
		return err
	}
	if m.Image, err = filepath.Abs(image); err != nil {
		return err
	}
	return st.save()
}

// PrepareOSDisk gives stopped member name a fresh OS disk, a copy of its
// image (SetImage), the one before set aside in DiskDir/previous/: the
// machine is re-imaged. It returns a line saying so.
func (st *State) PrepareOSDisk(name string) (string, error) {
	m, err := st.Member(name)
	if err != nil {
		return "", err
	}
	if m.Running() {
		return "", fmt.Errorf("%s is running; stop it before its OS disk is changed", name)
	}
	line, _, err := prepareOSDisk(st.DiskDir, m, time.Now(), true)
	if serr := st.save(); err == nil {
		err = serr
	}
	return line, err
}

// SetAsideDataDisk moves a stopped member's data disk to DiskDir/old/,
// stamped with the time, so that its next start gets a new blank disk.
// It returns where the old disk went ("" if there was none).
func (st *State) SetAsideDataDisk(name string) (string, error) {
	m, err := st.Member(name)
	if err != nil {
		return "", err
	}
	if m.Running() {
		return "", fmt.Errorf("%s is running; stop it before its data disk is set aside", name)
	}
	if _, err := os.Stat(m.DataDisk); errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	old := filepath.Join(st.DiskDir, "old")
	if err := os.MkdirAll(old, 0o700); err != nil {
		return "", fmt.Errorf("cluster: %w", err)
	}
	dst := filepath.Join(old, fmt.Sprintf("%s-data-%s.img", name, time.Now().UTC().Format("20060102T150405.000")))
	if err := os.Rename(m.DataDisk, dst); err != nil {
		return "", fmt.Errorf("cluster: set aside %s: %w", m.DataDisk, err)
	}
	return dst, nil
}

// Down presses every member's power button, waits up to timeout for all
// to power off, kills what is left by PID, stops the gateway and the
// switch and removes the state file. OS and data disks stay. The caller
// holds the lock.
func (st *State) Down(timeout time.Duration) []string {
	var mu sync.Mutex
	var report []string
	var wg sync.WaitGroup
	for _, m := range st.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			line := powerOff(m, timeout)
			mu.Lock()
			report = append(report, line)
			mu.Unlock()
		}()
	}
	wg.Wait()
	st.Gateway.Stop(5 * time.Second)
	st.Switch.Stop(5 * time.Second)
	os.Remove(st.SwitchSocket)
	os.Remove(filepath.Join(st.RunDir, StateFile))
	slices.Sort(report)
	return report
}

// gatewayAddrs picks the gateway's two addresses on the LAN (QEMU's host
// side and its DNS, which it insists on): the highest free ones.
func gatewayAddrs(o Options) ([]netip.Addr, error) {
	used := map[netip.Addr]bool{}
	for _, a := range o.Reserved {
		used[a] = true
	}
	for _, m := range o.Members {
		used[m.IP] = true
	}
	for _, hs := range o.HostServices {
		used[hs.LAN.Addr()] = true
	}
	var out []netip.Addr
	last := o.Network.Addr()
	for a := o.Network.Addr(); o.Network.Contains(a); a = a.Next() {
		last = a
	}
	for a := last.Prev(); len(out) < 2 && o.Network.Contains(a) && a != o.Network.Addr(); a = a.Prev() {
		if !used[a] {
			out = append(out, a)
		}
	}
	if len(out) < 2 {
		return nil, fmt.Errorf("network %s has no room for QEMU's host addresses; use a larger network", o.Network)
	}
	return out, nil
}

func portFree(p int) error {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		return err
	}
	return l.Close()
}
