package network

import (
	"net/netip"
	"strings"
	"testing"

	"etcdimg/ignition"
	"etcdimg/internal/spec"
)

func TestParseNetworkFileTheRenderedOne(t *testing.T) {
	c := spec.Default(3)
	c.Network.DNS = []string{"192.168.2.1", "192.168.2.2"}
	nf, err := ParseFile(ignition.NetworkFile(c, c.Members[1]))
	if err != nil {
		t.Fatal(err)
	}
	if nf.Address != netip.MustParsePrefix("192.168.2.52/24") || nf.Gateway != netip.MustParseAddr("192.168.2.1") || len(nf.DNS) != 2 {
		t.Errorf("parsed %+v", nf)
	}
	if !nf.matches("eth0") || !nf.matches("ens3") || nf.matches("lo") || nf.matches("wlan0") {
		t.Errorf("name matching wrong for %v", nf.Names)
	}
	if _, err := ParseFile([]byte("[Network]\nAddress=10.0.0.2/24\nDHCP=yes\n")); err == nil || !strings.Contains(err.Error(), "DHCP= is not supported") {
		t.Errorf("DHCP: %v", err)
	}
	if _, err := ParseFile([]byte("[Match]\nName=eth0\n")); err == nil {
		t.Error("a file without Address= was accepted")
	}
}
