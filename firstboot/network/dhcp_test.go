package network

import (
	"net"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// TestLeaseFrom reads the leases the clouds hand out: AWS's /20 with a
// router and MTU 9001; GCP's /32 with classless static routes to an
// off-subnet gateway (which must win over the router option).
func TestLeaseFrom(t *testing.T) {
	mk := func(mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
		d, err := dhcpv4.New(mods...)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	aws := mk(dhcpv4.WithYourIP(net.IPv4(172, 31, 16, 10)),
		dhcpv4.WithNetmask(net.CIDRMask(20, 32)),
		dhcpv4.WithRouter(net.IPv4(172, 31, 16, 1)),
		dhcpv4.WithDNS(net.IPv4(172, 31, 0, 2)),
		dhcpv4.WithOption(dhcpv4.Option{Code: dhcpv4.OptionInterfaceMTU, Value: dhcpv4.Uint16(9001)}),
		dhcpv4.WithLeaseTime(3600))
	gcp := mk(dhcpv4.WithYourIP(net.IPv4(10, 128, 0, 5)),
		dhcpv4.WithNetmask(net.CIDRMask(32, 32)),
		dhcpv4.WithRouter(net.IPv4(10, 128, 0, 99)),
		dhcpv4.WithOption(dhcpv4.OptClasslessStaticRoute(
			&dhcpv4.Route{Dest: &net.IPNet{IP: net.IPv4(10, 128, 0, 1).To4(), Mask: net.CIDRMask(32, 32)}, Router: net.IPv4zero},
			&dhcpv4.Route{Dest: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Router: net.IPv4(10, 128, 0, 1)},
		)))
	for _, tc := range []struct {
		name string
		ack  *dhcpv4.DHCPv4
		want string
	}{
		{"aws", aws, "172.31.16.10/20 via 172.31.16.1 mtu 9001 lease 1h0m0s"},
		{"gcp", gcp, "10.128.0.5/32 via 10.128.0.1 lease 1h0m0s"},
		{"no address", mk(), ""},
	} {
		lc, err := leaseFrom(tc.ack)
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s: accepted %v", tc.name, lc)
			}
			continue
		}
		if err != nil || lc.String() != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, lc, err, tc.want)
		}
	}
	if lc, _ := leaseFrom(aws); len(lc.DNS) != 1 || lc.Lease != time.Hour {
		t.Errorf("aws DNS %v lease %s", lc.DNS, lc.Lease)
	}
}
