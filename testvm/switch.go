package testvm

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Switch is a learning Ethernet switch for QEMU "stream" netdevs on a unix
// socket: every member connects as a client, and frames travel as a
// 4-byte big-endian length followed by the frame. A QEMU stream server
// takes one peer only, hence the switch. It needs no root and no host
// network device.
type Switch struct {
	ln    net.Listener
	mu    sync.Mutex
	ports map[*swPort]bool
	macs  map[[6]byte]*swPort
	wg    sync.WaitGroup
	rules rules // what `etcdimg chaos` does to the LAN; none by default
	ctl   net.Listener
}

// LANRules are faults of the LAN that `etcdimg chaos` injects: sides
// that cannot reach each other, and a share of frames lost. A MAC on no
// side (the gateway: the host's clients and services) reaches every
// side. The zero value is a healthy LAN.
type LANRules struct {
	Sides [][]string `json:"sides,omitempty"` // MAC addresses, as net.HardwareAddr prints them
	Lossy []string   `json:"lossy,omitempty"` // frames from or to these MACs are lost ...
	Loss  float64    `json:"loss,omitempty"`  // ... with this probability
}

// rules is LANRules parsed.
type rules struct {
	side  map[[6]byte]int // 1-based; 0: on every side
	lossy map[[6]byte]bool
	loss  float64
}

func (r LANRules) parse() (rules, error) {
	out := rules{side: map[[6]byte]int{}, lossy: map[[6]byte]bool{}, loss: r.Loss}
	mac := func(s string) ([6]byte, error) {
		var m [6]byte
		hw, err := net.ParseMAC(s)
		if err != nil || len(hw) != 6 {
			return m, fmt.Errorf("testvm: LAN rules: %q is not a MAC address", s)
		}
		copy(m[:], hw)
		return m, nil
	}
	for i, side := range r.Sides {
		for _, s := range side {
			m, err := mac(s)
			if err != nil {
				return rules{}, err
			}
			out.side[m] = i + 1
		}
	}
	for _, s := range r.Lossy {
		m, err := mac(s)
		if err != nil {
			return rules{}, err
		}
		out.lossy[m] = true
	}
	if r.Loss < 0 || r.Loss > 1 {
		return rules{}, fmt.Errorf("testvm: LAN rules: loss %v is not a share between 0 and 1", r.Loss)
	}
	return out, nil
}

// SetRules replaces the LAN's faults (the zero LANRules heals it).
func (s *Switch) SetRules(r LANRules) error {
	parsed, err := r.parse()
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.rules = parsed
	s.mu.Unlock()
	return nil
}

// passes reports whether a frame from src reaches port q (whose learned
// MACs are its addresses); s.mu is held.
func (s *Switch) passes(src [6]byte, q *swPort) bool {
	r := s.rules
	if len(r.side) == 0 && r.loss == 0 {
		return true
	}
	for mac, p := range s.macs {
		if p != q {
			continue
		}
		a, b := r.side[src], r.side[mac]
		if a != 0 && b != 0 && a != b {
			return false
		}
		if r.loss > 0 && (r.lossy[src] || r.lossy[mac]) && rand.Float64() < r.loss {
			return false
		}
	}
	return true
}

type swPort struct {
	conn net.Conn
	// out is the port's transmit queue, written to the member by its own
	// goroutine (drain): a member that does not read (a guest rebooting,
	// its NIC reset, or stuck) fills its queue and loses frames, as on a
	// real switch, and never stalls the ports that send to it.
	out chan []byte
}

// portQueue is how many frames wait for a member before more are dropped.
const portQueue = 256

func newPort(c net.Conn) *swPort { return &swPort{conn: c, out: make(chan []byte, portQueue)} }

// drain writes the port's queued frames until its connection fails.
func (p *swPort) drain() {
	for f := range p.out {
		if _, err := p.conn.Write(f); err != nil {
			p.conn.Close()
			for range p.out {
			}
			return
		}
	}
}

// maxFrame bounds a frame; QEMU sends at most 64 KiB.
const maxFrame = 1 << 17

// ListenSwitch listens on the unix socket path.
func ListenSwitch(path string) (*Switch, error) {
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("testvm: switch: %w", err)
	}
	return &Switch{ln: ln, ports: map[*swPort]bool{}, macs: map[[6]byte]*swPort{}}, nil
}

// RunSwitch is the LAN switch's process (`etcdimg lan --socket`, which
// StartSwitch starts): it serves members on socket and LANRules on its
// control socket (ControlPath: `etcdimg chaos` partitions the LAN there)
// until SIGINT or SIGTERM. A control socket that fails is reported on
// errw; the LAN goes on without it.
func RunSwitch(socket string, errw io.Writer) error {
	sw, err := ListenSwitch(socket)
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { <-sig; sw.Close() }()
	go func() {
		if err := sw.ServeControl(ControlPath(socket)); err != nil {
			fmt.Fprintln(errw, err)
		}
	}()
	return sw.Serve()
}

// Serve accepts members until Close.
func (s *Switch) Serve() error {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				s.wg.Wait()
				return nil
			}
			return fmt.Errorf("testvm: switch: %w", err)
		}
		p := newPort(c)
		s.mu.Lock()
		s.ports[p] = true
		s.mu.Unlock()
		s.wg.Add(2)
		go func() {
			defer s.wg.Done()
			p.drain()
		}()
		go func() {
			defer s.wg.Done()
			s.run(p)
		}()
	}
}

// Close stops the switch and disconnects every member.
func (s *Switch) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	if s.ctl != nil {
		s.ctl.Close()
	}
	for p := range s.ports {
		p.conn.Close()
	}
	s.mu.Unlock()
	return err
}

func (s *Switch) run(p *swPort) {
	defer func() {
		p.conn.Close()
		s.mu.Lock()
		delete(s.ports, p)
		for mac, q := range s.macs {
			if q == p {
				delete(s.macs, mac)
			}
		}
		// No sender holds p any more (they pick ports under s.mu and
		// send under it too): its queue can close.
		close(p.out)
		s.mu.Unlock()
	}()
	var hdr [4]byte
	buf := make([]byte, maxFrame)
	for {
		if _, err := io.ReadFull(p.conn, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n > maxFrame {
			return
		}
		frame := buf[:n]
		if _, err := io.ReadFull(p.conn, frame); err != nil {
			return
		}
		if n < 14 {
			continue
		}
		var dst, src [6]byte
		copy(dst[:], frame[0:6])
		copy(src[:], frame[6:12])
		s.mu.Lock()
		if src[0]&1 == 0 {
			s.macs[src] = p
		}
		var out []*swPort
		if q, ok := s.macs[dst]; ok && dst[0]&1 == 0 {
			if q != p && s.passes(src, q) {
				out = []*swPort{q}
			}
		} else {
			for q := range s.ports {
				if q != p && s.passes(src, q) {
					out = append(out, q)
				}
			}
		}
		if len(out) > 0 {
			f := append(append(make([]byte, 0, len(hdr)+len(frame)), hdr[:]...), frame...)
			for _, q := range out {
				q.send(f)
			}
		}
		s.mu.Unlock()
	}
}

// send queues frame f for the member, or drops it when the member has
// not taken the frames before it: a member that cannot keep up loses
// frames, as on a real LAN. The caller holds the switch's lock.
func (p *swPort) send(f []byte) {
	select {
	case p.out <- f:
	default:
	}
}

// StartSwitch runs command (with the socket path appended) as the LAN
// switch in its own session, so that the LAN outlives the command that
// started it, and waits until the socket accepts connections.
func StartSwitch(command []string, socket, logPath string) (Process, error) {
	if len(command) == 0 {
		return Process{}, errors.New("testvm: no switch command")
	}
	os.Remove(socket)
	logf, err := os.Create(logPath)
	if err != nil {
		return Process{}, fmt.Errorf("testvm: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(command[0], append(slices.Clone(command[1:]), socket)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return Process{}, fmt.Errorf("testvm: start the LAN switch: %w", err)
	}
	go cmd.Wait() // reap it if it dies while we run
	p := Process{PID: cmd.Process.Pid, Args: cmd.Args}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return p, nil
		}
		if time.Now().After(deadline) || !Alive(p.PID) {
			cmd.Process.Kill()
			b, _ := os.ReadFile(logPath)
			return Process{}, fmt.Errorf("testvm: the LAN switch did not come up on %s: %s", socket, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ControlPath is where the switch listening on socket takes its rules.
func ControlPath(socket string) string { return socket + ".ctl" }

// ServeControl takes LANRules on path, one JSON object per connection,
// answered "ok" or the error, until the switch is closed.
func (s *Switch) ServeControl(path string) error {
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("testvm: switch control: %w", err)
	}
	s.mu.Lock()
	s.ctl = ln
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("testvm: switch control: %w", err)
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			var r LANRules
			err := json.NewDecoder(c).Decode(&r)
			if err == nil {
				err = s.SetRules(r)
			}
			if err != nil {
				fmt.Fprintf(c, "error: %v\n", err)
				return
			}
			fmt.Fprintln(c, "ok")
		}()
	}
}

// SetLANRules sets the faults of the LAN whose switch listens on socket
// (the zero LANRules heals it).
func SetLANRules(socket string, r LANRules) error {
	c, err := net.DialTimeout("unix", ControlPath(socket), 5*time.Second)
	if err != nil {
		return fmt.Errorf("testvm: LAN switch control: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := json.NewEncoder(c).Encode(r); err != nil {
		return fmt.Errorf("testvm: LAN switch control: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("testvm: LAN switch control: %w", err)
	}
	if line = strings.TrimSpace(line); line != "ok" {
		return fmt.Errorf("testvm: LAN switch control: %s", strings.TrimPrefix(line, "error: "))
	}
	return nil
}
