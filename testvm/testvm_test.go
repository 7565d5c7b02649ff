package testvm

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func frame(dst, src byte, payload string) []byte {
	f := make([]byte, 14+len(payload))
	copy(f[0:6], []byte{2, 0, 0, 0, 0, dst})
	if dst == 0xff {
		copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	}
	copy(f[6:12], []byte{2, 0, 0, 0, 0, src})
	copy(f[14:], payload)
	return f
}

func send(t *testing.T, c net.Conn, f []byte) {
	t.Helper()
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(f)))
	if _, err := c.Write(append(hdr[:], f...)); err != nil {
		t.Fatal(err)
	}
}

// recv returns the next frame's payload, or "" if none comes in 300 ms.
func recv(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return ""
	}
	f := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(c, f); err != nil {
		t.Fatal(err)
	}
	return string(f[14:])
}

// TestSwitchLearnsAndFloods: broadcasts and unknown destinations reach
// every other port; once a MAC is learned, its frames reach only its port.
func TestSwitchLearnsAndFloods(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "lan.sock")
	sw, err := ListenSwitch(sock)
	if err != nil {
		t.Fatal(err)
	}
	go sw.Serve()
	defer sw.Close()
	var c [3]net.Conn
	for i := range c {
		if c[i], err = net.Dial("unix", sock); err != nil {
			t.Fatal(err)
		}
		defer c[i].Close()
	}
	time.Sleep(100 * time.Millisecond) // let the switch register the ports

	// Port 1 (MAC ..01) broadcasts: ports 2 and 3 get it, and 01 is learned.
	send(t, c[0], frame(0xff, 1, "hello all"))
	if recv(t, c[1]) != "hello all" || recv(t, c[2]) != "hello all" {
		t.Fatal("broadcast not flooded")
	}
	// Port 2 answers 01 by unicast: only port 1 gets it; 02 is learned.
	send(t, c[1], frame(1, 2, "to one"))
	if got := recv(t, c[0]); got != "to one" {
		t.Fatalf("port 1 got %q", got)
	}
	if got := recv(t, c[2]); got != "" {
		t.Fatalf("port 3 overheard unicast %q", got)
	}
	// A frame for an unknown MAC is flooded.
	send(t, c[0], frame(9, 1, "who"))
	if recv(t, c[1]) != "who" || recv(t, c[2]) != "who" {
		t.Fatal("unknown unicast not flooded")
	}
}

func TestArgs(t *testing.T) {
	o := Options{
		Name: "etcd-1", Image: "/i.img", DataDisk: "/d.img", MemoryMB: 256, CPUs: 1, Accel: "tcg",
		Network: netip.MustParsePrefix("192.168.2.0/24"), HostIP: netip.MustParseAddr("192.168.2.1"),
		GuestIP: netip.MustParseAddr("192.168.2.51"), Forwards: []Forward{{Host: 1234, Guest: 2379}},
		Config: "/c.ign",
	}
	args := strings.Join(o.Args("/console", "/qmp"), " ")
	for _, want := range []string{
		"-accel tcg,tb-size=64", "-cpu max,erms=off,fsrm=off", "-m 256",
		"if=virtio,format=raw,readonly=on,file=/i.img", "if=virtio,format=raw,file=/d.img",
		"hostfwd=tcp:127.0.0.1:1234-192.168.2.51:2379", "restrict=on",
		"-fw_cfg name=opt/com.coreos/config,file=/c.ign", "mac=52:54:00:a8:02:33",
		"file=" + OVMFCode, "readonly=on,file=" + OVMFVars, "-serial file:/console", "virtio-net-pci,romfile=,",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("args lack %q:\n%s", want, args)
		}
	}
	o.LAN, o.Accel = "/lan.sock", "kvm"
	args = strings.Join(o.Args("/console", "/qmp"), " ")
	if strings.Contains(args, "user,") || !strings.Contains(args, "stream,id=lan0,server=off,addr.type=unix,addr.path=/lan.sock") || !strings.Contains(args, "-cpu host") || !strings.Contains(args, "virtio-net-pci,romfile=,") {
		t.Errorf("LAN args:\n%s", args)
	}
}
