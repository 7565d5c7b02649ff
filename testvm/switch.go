package testvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
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
}

type swPort struct {
	conn net.Conn
	mu   sync.Mutex // serialises writes
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
		p := &swPort{conn: c}
		s.mu.Lock()
		s.ports[p] = true
		s.mu.Unlock()
		s.wg.Add(1)
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
			if q != p {
				out = []*swPort{q}
			}
		} else {
			for q := range s.ports {
				if q != p {
					out = append(out, q)
				}
			}
		}
		s.mu.Unlock()
		for _, q := range out {
			q.send(hdr[:], frame)
		}
	}
}

func (p *swPort) send(hdr, frame []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// A member that cannot keep up loses the frame, as on a real LAN; its
	// reader notices a dead connection.
	if _, err := p.conn.Write(append(append(make([]byte, 0, len(hdr)+len(frame)), hdr...), frame...)); err != nil {
		p.conn.Close()
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
