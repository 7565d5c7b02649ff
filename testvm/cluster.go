package testvm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"
)

// StateFile is the running cluster's record in the run directory: what
// `etcdimg status`, `health`, `etcdctl` and `down` read.
const StateFile = "cluster.json"

// MemberSpec is one member to boot.
type MemberSpec struct {
	Name  string
	IP    netip.Addr
	Image string
}

// ClusterOptions describe a cluster to boot on one virtual LAN.
type ClusterOptions struct {
	RunDir   string // consoles, NVRAM, sockets, the state file
	DiskDir  string // data disks, kept across down and up
	Network  netip.Prefix
	Reserved []netip.Addr // addresses the LAN must not hand to QEMU's host side (the gateway)
	Members  []MemberSpec
	MemoryMB int
	Accel    string
	PortBase int   // member i (from 1) gets PortBase+100i+79 (client) and +81 (metrics)
	DataSize int64 // size of a new data disk
	// SwitchCommand runs the LAN switch as its own process (so that the
	// cluster outlives the command that started it); its last argument
	// is followed by the socket path.
	SwitchCommand []string
}

// MemberState is one running member.
type MemberState struct {
	Name     string `json:"name"`
	IP       string `json:"ip"`
	PID      int    `json:"pid"`
	Client   int    `json:"clientPort"`
	Metrics  int    `json:"metricsPort"`
	Console  string `json:"console"`
	QMP      string `json:"qmp"`
	Image    string `json:"image"`
	DataDisk string `json:"dataDisk"`
}

// ClusterState is the running cluster.
type ClusterState struct {
	SwitchPID    int           `json:"switchPid"`
	GatewayPID   int           `json:"gatewayPid"`
	SwitchSocket string        `json:"switchSocket"`
	Accel        string        `json:"accel"`
	MemoryMB     int           `json:"memoryMB"`
	Started      time.Time     `json:"started"`
	Members      []MemberState `json:"members"`
}

// Ports returns member i's (from 1) client and metrics ports on the host.
func Ports(base, i int) (client, metrics int) {
	return base + 100*i + 79, base + 100*i + 81
}

// ErrNotRunning is returned by LoadState when no cluster is recorded.
var ErrNotRunning = errors.New("no cluster is running here (no " + StateFile + ")")

// LoadState reads the state file of runDir.
func LoadState(runDir string) (*ClusterState, error) {
	b, err := os.ReadFile(filepath.Join(runDir, StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotRunning
	}
	if err != nil {
		return nil, fmt.Errorf("testvm: %w", err)
	}
	var st ClusterState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("testvm: %s: %w", StateFile, err)
	}
	return &st, nil
}

func (st *ClusterState) save(runDir string) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(runDir, "."+StateFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("testvm: %w", err)
	}
	return os.Rename(tmp, filepath.Join(runDir, StateFile))
}

// Running reports the members whose QEMU is alive.
func (st *ClusterState) Running() []MemberState {
	var up []MemberState
	for _, m := range st.Members {
		if Alive(m.PID) && IsQEMU(m.PID, m.Image) {
			up = append(up, m)
		}
	}
	return up
}

// Up boots every member on one LAN. Each QEMU runs in its own session, so
// the cluster keeps running when the caller exits. The state file is
// written after every start, so Down can clean up even a partial start.
func Up(o ClusterOptions) (*ClusterState, error) {
	if st, err := LoadState(o.RunDir); err == nil && len(st.Running()) > 0 {
		return nil, fmt.Errorf("a cluster is already running from %s (%d members); run `etcdimg down` first", o.RunDir, len(st.Running()))
	}
	accel, err := ResolveAccel(o.Accel)
	if err != nil {
		return nil, err
	}
	for i := range o.Members {
		c, m := Ports(o.PortBase, i+1)
		for _, p := range []int{c, m} {
			if err := portFree(p); err != nil {
				return nil, fmt.Errorf("port %d for %s: %w; stop what uses it or pass another --port-base", p, o.Members[i].Name, err)
			}
		}
	}
	gw, err := gatewayAddrs(o)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{o.RunDir, o.DiskDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("testvm: %w", err)
		}
	}
	st := &ClusterState{Accel: accel, MemoryMB: o.MemoryMB, Started: time.Now().UTC().Truncate(time.Second)}
	st.SwitchSocket = filepath.Join(o.RunDir, "lan.sock")
	if st.SwitchPID, err = startSwitch(o.SwitchCommand, st.SwitchSocket, filepath.Join(o.RunDir, "lan.log")); err != nil {
		return nil, err
	}
	if err := st.save(o.RunDir); err != nil {
		return st, err
	}
	gwOpts := GatewayOptions{Dir: o.RunDir, LAN: st.SwitchSocket, Network: o.Network, HostIP: gw[0], DNSIP: gw[1]}
	for i, m := range o.Members {
		client, metrics := Ports(o.PortBase, i+1)
		gwOpts.Forwards = append(gwOpts.Forwards, GatewayForward{client, m.IP, 2379}, GatewayForward{metrics, m.IP, 2381})
	}
	if st.GatewayPID, err = StartGateway(gwOpts); err != nil {
		return st, err
	}
	if err := st.save(o.RunDir); err != nil {
		return st, err
	}
	for i, m := range o.Members {
		client, metrics := Ports(o.PortBase, i+1)
		vm, err := Start(Options{
			Name:     m.Name,
			Dir:      o.RunDir,
			Image:    m.Image,
			DataDisk: filepath.Join(o.DiskDir, m.Name+"-data.img"),
			DataSize: o.DataSize,
			MemoryMB: o.MemoryMB,
			Accel:    accel,
			GuestIP:  m.IP,
			LAN:      st.SwitchSocket,
		})
		if err != nil {
			return st, err
		}
		st.Members = append(st.Members, MemberState{
			Name: m.Name, IP: m.IP.String(), PID: vm.PID(), Client: client, Metrics: metrics,
			Console: vm.Console, QMP: vm.QMPPath(), Image: m.Image, DataDisk: vm.Opts.DataDisk,
		})
		if err := st.save(o.RunDir); err != nil {
			return st, err
		}
	}
	return st, nil
}

// gatewayAddrs picks the gateway's two addresses on the LAN (QEMU's host
// side and its DNS, which it insists on): the highest free ones.
func gatewayAddrs(o ClusterOptions) ([]netip.Addr, error) {
	used := map[netip.Addr]bool{}
	for _, a := range o.Reserved {
		used[a] = true
	}
	for _, m := range o.Members {
		used[m.IP] = true
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

func startSwitch(command []string, socket, logPath string) (int, error) {
	if len(command) == 0 {
		return 0, errors.New("testvm: no switch command")
	}
	os.Remove(socket)
	logf, err := os.Create(logPath)
	if err != nil {
		return 0, fmt.Errorf("testvm: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(command[0], append(slices.Clone(command[1:]), socket)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("testvm: start the LAN switch: %w", err)
	}
	go cmd.Wait() // reap it if it dies while we run
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return cmd.Process.Pid, nil
		}
		if time.Now().After(deadline) || !Alive(cmd.Process.Pid) {
			cmd.Process.Kill()
			b, _ := os.ReadFile(logPath)
			return 0, fmt.Errorf("testvm: the LAN switch did not come up on %s: %s", socket, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Down presses every member's power button, waits up to timeout for all
// to power off, kills what is left by PID, stops the switch and removes
// the state file. Data disks stay.
func (st *ClusterState) Down(runDir string, timeout time.Duration) []string {
	var mu sync.Mutex
	var report []string
	say := func(format string, args ...any) {
		mu.Lock()
		report = append(report, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for _, m := range st.Members {
		if !Alive(m.PID) || !IsQEMU(m.PID, m.Image) {
			say("%s: not running", m.Name)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			if err := QMP(m.QMP, "system_powerdown"); err != nil {
				say("%s: power button: %v; killing pid %d", m.Name, err, m.PID)
				syscall.Kill(m.PID, syscall.SIGKILL)
				WaitGone(m.PID, 10*time.Second)
				return
			}
			if WaitGone(m.PID, timeout) {
				say("%s: powered off in %.1fs", m.Name, time.Since(start).Seconds())
				return
			}
			say("%s: still running after %s; killed pid %d", m.Name, timeout, m.PID)
			syscall.Kill(m.PID, syscall.SIGKILL)
			WaitGone(m.PID, 10*time.Second)
		}()
	}
	wg.Wait()
	if st.GatewayPID > 0 && Alive(st.GatewayPID) && cmdlineHas(st.GatewayPID, "etcdimg-gateway", st.SwitchSocket) {
		syscall.Kill(st.GatewayPID, syscall.SIGTERM)
		if !WaitGone(st.GatewayPID, 5*time.Second) {
			syscall.Kill(st.GatewayPID, syscall.SIGKILL)
		}
	}
	if st.SwitchPID > 0 && Alive(st.SwitchPID) && cmdlineHas(st.SwitchPID, st.SwitchSocket) {
		syscall.Kill(st.SwitchPID, syscall.SIGTERM)
		if !WaitGone(st.SwitchPID, 5*time.Second) {
			syscall.Kill(st.SwitchPID, syscall.SIGKILL)
		}
	}
	os.Remove(st.SwitchSocket)
	os.Remove(filepath.Join(runDir, StateFile))
	slices.Sort(report)
	return report
}
