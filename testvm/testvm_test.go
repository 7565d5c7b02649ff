package testvm

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
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
	c := lanOf(t)

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

// TestSwitchPartitions: rules sent to the switch's control socket cut
// the LAN into sides (a MAC on no side, the gateway, reaches both), lose
// every frame of a lossy member at share 1, and are lifted by the zero
// rules; a bad rule is refused and changes nothing.
func TestSwitchPartitions(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "lan.sock")
	sw, err := ListenSwitch(sock)
	if err != nil {
		t.Fatal(err)
	}
	go sw.Serve()
	go sw.ServeControl(ControlPath(sock))
	defer sw.Close()
	var c [4]net.Conn // MACs 02:00:00:00:00:01 … 04; 04 is the gateway
	for i := range c {
		if c[i], err = net.Dial("unix", sock); err != nil {
			t.Fatal(err)
		}
		defer c[i].Close()
	}
	time.Sleep(100 * time.Millisecond)
	for i := range c { // every MAC learned, and every port drained
		send(t, c[i], frame(0xff, byte(i+1), "hi"))
		for j := range c {
			if j != i {
				recv(t, c[j])
			}
		}
	}
	mac := func(i int) string { return fmt.Sprintf("02:00:00:00:00:%02x", i) }
	reaches := func(from, to int) bool {
		send(t, c[from-1], frame(byte(to), byte(from), "ping"))
		return recv(t, c[to-1]) == "ping"
	}
	broadcastReaches := func(from int) []int {
		send(t, c[from-1], frame(0xff, byte(from), "all"))
		var got []int
		for i := range c {
			if i != from-1 && recv(t, c[i]) == "all" {
				got = append(got, i+1)
			}
		}
		return got
	}

	// Isolate member 1 from 2 and 3; the gateway (4) is on no side.
	for ctl := 0; ctl < 30; ctl++ { // the control socket comes up with the goroutine
		if err = SetLANRules(sock, LANRules{Sides: [][]string{{mac(1)}, {mac(2), mac(3)}}}); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if reaches(1, 2) || reaches(3, 1) {
		t.Error("a frame crossed the partition")
	}
	if !reaches(2, 3) || !reaches(1, 4) || !reaches(4, 1) || !reaches(4, 2) {
		t.Error("a frame within a side, or to or from the gateway, was lost")
	}
	if got := broadcastReaches(1); !reflect.DeepEqual(got, []int{4}) {
		t.Errorf("member 1's broadcast reached %v, want [4]", got)
	}
	// Member 2 loses everything; the others talk.
	if err := SetLANRules(sock, LANRules{Lossy: []string{mac(2)}, Loss: 1}); err != nil {
		t.Fatal(err)
	}
	if reaches(1, 2) || reaches(2, 3) || !reaches(1, 3) {
		t.Error("loss of 1 did not take exactly member 2's frames")
	}
	// A bad rule is refused, and the rules before it stay.
	if err := SetLANRules(sock, LANRules{Loss: 2}); err == nil || !strings.Contains(err.Error(), "loss 2 is not a share") {
		t.Errorf("loss 2: %v", err)
	}
	if err := SetLANRules(sock, LANRules{Sides: [][]string{{"nonsense"}}}); err == nil || !strings.Contains(err.Error(), `"nonsense" is not a MAC address`) {
		t.Errorf("a bad MAC: %v", err)
	}
	if reaches(1, 2) {
		t.Error("a refused rule changed the LAN")
	}
	// Healed.
	if err := SetLANRules(sock, LANRules{}); err != nil {
		t.Fatal(err)
	}
	if !reaches(1, 2) || !reaches(2, 1) || !reaches(3, 1) {
		t.Error("the healed LAN still drops frames")
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

// TestArgsWritableAndReboot: by default the OS disk is never written
// (read-only, or behind a temporary overlay on NVMe) and a guest's
// reboot ends QEMU; Writable attaches the image itself read-write on
// every bus, and Reboot lets the guest reboot. MachineArgs, which the KVM
// probe and the boot floors use, keeps -no-reboot.
func TestArgsWritableAndReboot(t *testing.T) {
	for _, tc := range []struct {
		bus      string
		writable bool
		want     string
	}{
		{"", false, "-drive if=virtio,format=raw,readonly=on,file=/i.img "},
		{"", true, "-drive if=virtio,format=raw,file=/i.img "},
		{"scsi", false, "-drive if=none,id=osdisk,readonly=on,format=raw,file=/i.img "},
		{"scsi", true, "-drive if=none,id=osdisk,format=raw,file=/i.img "},
		{"nvme", false, "-drive if=none,id=osdisk,snapshot=on,format=raw,file=/i.img "},
		{"nvme", true, "-drive if=none,id=osdisk,format=raw,file=/i.img "},
	} {
		o := Options{Name: "etcd-1", Image: "/i.img", DataDisk: "/d.img", MemoryMB: 256, CPUs: 1, Accel: "tcg", Bus: tc.bus, Writable: tc.writable, GuestIP: netip.MustParseAddr("192.168.2.51")}
		args := strings.Join(o.Args("/console", "/qmp"), " ")
		if !strings.Contains(args, tc.want) {
			t.Errorf("bus %q, writable %v: args lack %q:\n%s", tc.bus, tc.writable, tc.want, args)
		}
		if n := strings.Count(args, "file=/i.img"); n != 1 {
			t.Errorf("bus %q, writable %v: the image is attached %d times:\n%s", tc.bus, tc.writable, n, args)
		}
		if !strings.Contains(args, " -no-reboot ") {
			t.Errorf("bus %q: a VM without Reboot lacks -no-reboot:\n%s", tc.bus, args)
		}
	}
	o := Options{Name: "etcd-1", Image: "/i.img", DataDisk: "/d.img", MemoryMB: 256, CPUs: 1, Accel: "kvm", Writable: true, Reboot: true, GuestIP: netip.MustParseAddr("192.168.2.51")}
	args := o.Args("/console", "/qmp")
	if slices.Contains(args, "-no-reboot") {
		t.Errorf("Reboot still passes -no-reboot: %q", args)
	}
	if !slices.Contains(args, "-nodefaults") || !slices.Contains(args, "-display") {
		t.Errorf("Reboot lost the machine's other arguments: %q", args)
	}
	for _, accel := range []string{"kvm", "tcg"} {
		if m := MachineArgs(accel, 256, 1); !slices.Contains(m, "-no-reboot") {
			t.Errorf("MachineArgs(%s) lacks -no-reboot: %q", accel, m)
		}
	}
}

// TestAMemberThatDoesNotReadStallsNoOne: a member whose NIC stops taking
// frames (a guest rebooting in place, or stuck) loses the frames sent to
// it, and the others go on talking: broadcasts, which reach it too, do
// not block the switch. On the old switch, which wrote to each port in
// the sender's goroutine, the senders stalled once the deaf member's
// socket buffer filled, and with them the whole LAN.
func TestAMemberThatDoesNotReadStallsNoOne(t *testing.T) {
	c := lanOf(t)
	// Port 3 never reads. Port 1 floods far more than any socket buffer
	// holds, while port 2 drains what it gets.
	payload := strings.Repeat("x", 60000)
	done := make(chan error, 1)
	go func() {
		c[1].SetReadDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 1<<16)
		for {
			if _, err := c[1].Read(buf); err != nil {
				done <- err
				return
			}
		}
	}()
	sent := make(chan error, 1)
	go func() {
		for range 2000 { // 120 MB of broadcasts
			var hdr [4]byte
			f := frame(0xff, 1, payload)
			binary.BigEndian.PutUint32(hdr[:], uint32(len(f)))
			c[0].SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := c[0].Write(append(hdr[:], f...)); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	select {
	case err := <-sent:
		if err != nil {
			t.Fatalf("the sender stalled behind a member that does not read: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the sender stalled behind a member that does not read")
	}
	// And unicast between the two live ports still flows.
	send(t, c[1], frame(1, 2, "still here"))
	deadline := time.Now().Add(5 * time.Second)
	for got := recv(t, c[0]); got != "still here"; got = recv(t, c[0]) {
		if time.Now().After(deadline) {
			t.Fatal("port 1 no longer gets frames")
		}
	}
}

// lanOf starts a switch with three members plugged in, stopped and
// unplugged when the test ends, and returns their connections.
func lanOf(t *testing.T) [3]net.Conn {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "lan.sock")
	sw, err := ListenSwitch(sock)
	if err != nil {
		t.Fatal(err)
	}
	go sw.Serve()
	t.Cleanup(func() { sw.Close() })
	var c [3]net.Conn
	for i := range c {
		if c[i], err = net.Dial("unix", sock); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c[i].Close() })
	}
	time.Sleep(100 * time.Millisecond) // let the switch register the ports
	return c
}
