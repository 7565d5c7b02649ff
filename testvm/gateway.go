package testvm

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// GatewayForward maps 127.0.0.1:Host to Guest:Port on the LAN.
type GatewayForward struct {
	Host  int
	Guest netip.Addr
	Port  int
}

// GuestForward lets members reach a service of the host: a connection
// to LAN (an address of the LAN that no member has) runs Command, whose
// standard input and output are the connection (QEMU's guestfwd "cmd:").
type GuestForward struct {
	LAN     netip.AddrPort
	Command string
}

// Gateway gives the host a way onto the LAN without root: a QEMU with no
// machine at all whose hub joins the switch to a user-mode network, which
// forwards loopback ports to members. It sits on the LAN as HostIP and
// answers ARP for that (and DNSIP) only; a learning switch never sends it
// the members' unicast traffic, so it cannot interfere with them.
type GatewayOptions struct {
	Dir      string
	LAN      string // the switch's socket
	Network  netip.Prefix
	HostIP   netip.Addr
	DNSIP    netip.Addr
	Forwards []GatewayForward
	Guest    []GuestForward
}

// Args returns the gateway QEMU's arguments.
func (g GatewayOptions) Args() []string {
	user := fmt.Sprintf("user,id=host0,net=%s,host=%s,dns=%s,restrict=on,ipv6=off", g.Network, g.HostIP, g.DNSIP)
	for _, f := range g.Forwards {
		user += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-%s:%d", f.Host, f.Guest, f.Port)
	}
	for _, f := range g.Guest {
		// QEMU's option parser reads ",," as a literal comma.
		user += fmt.Sprintf(",guestfwd=tcp:%s-cmd:%s", f.LAN, strings.ReplaceAll(f.Command, ",", ",,"))
	}
	return []string{
		"-name", "etcdimg-gateway",
		"-machine", "none", "-nodefaults", "-no-user-config", "-display", "none",
		"-netdev", "stream,id=lan0,server=off,addr.type=unix,addr.path=" + g.LAN,
		"-netdev", user,
		"-netdev", "hubport,id=hub-lan,hubid=0,netdev=lan0",
		"-netdev", "hubport,id=hub-host,hubid=0,netdev=host0",
	}
}

// StartGateway starts the gateway QEMU in its own process group.
func StartGateway(g GatewayOptions) (Process, error) {
	logf, err := os.Create(filepath.Join(g.Dir, "gateway-qemu.log"))
	if err != nil {
		return Process{}, fmt.Errorf("testvm: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command("qemu-system-x86_64", g.Args()...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return Process{}, fmt.Errorf("testvm: start the gateway: %w", err)
	}
	go cmd.Wait()
	return Process{PID: cmd.Process.Pid, Args: cmd.Args}, nil
}

// Relay copies between this process's standard input and output (a
// guest's connection, under GuestForward) and a TCP connection to addr,
// until both directions end.
func Relay(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(conn, os.Stdin)
		conn.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(os.Stdout, conn)
	// Standard input and output are one socket: shut its sending half,
	// so the guest sees the server's end of the stream.
	syscall.Shutdown(int(os.Stdout.Fd()), syscall.SHUT_WR)
	<-done
	return nil
}
