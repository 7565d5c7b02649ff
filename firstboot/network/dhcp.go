package network

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"

	"etcdimg/firstboot/internal/console"
)

// dhcpWait bounds how long a cloud member waits for its first lease.
const dhcpWait = 60 * time.Second

// leaseConfig is what a DHCP lease sets on the interface.
type leaseConfig struct {
	Addr   netip.Prefix
	Routes []leaseRoute
	MTU    int
	DNS    []netip.Addr
	Lease  time.Duration
}

type leaseRoute struct {
	Dst netip.Prefix // 0.0.0.0/0 for the default route
	Via netip.Addr
}

// leaseFrom reads an ACK: the address and mask, the classless static
// routes (RFC 3442; they replace the router option when present, and GCP
// sends a /32 address with a route to its gateway), the interface MTU
// (AWS: 9001) and the name servers.
func leaseFrom(ack *dhcpv4.DHCPv4) (leaseConfig, error) {
	var lc leaseConfig
	ip, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok || !ip.IsValid() || ip.IsUnspecified() {
		return lc, fmt.Errorf("the lease has no address")
	}
	bits := 32
	if m := ack.SubnetMask(); m != nil {
		bits, _ = m.Size()
	}
	lc.Addr = netip.PrefixFrom(ip, bits)
	if rs := ack.ClasslessStaticRoute(); len(rs) > 0 {
		for _, r := range rs {
			dst, _ := netip.AddrFromSlice(r.Dest.IP.To4())
			ones, _ := r.Dest.Mask.Size()
			via, _ := netip.AddrFromSlice(r.Router.To4())
			lc.Routes = append(lc.Routes, leaseRoute{Dst: netip.PrefixFrom(dst, ones), Via: via})
		}
	} else if rt := ack.Router(); len(rt) > 0 {
		via, _ := netip.AddrFromSlice(rt[0].To4())
		lc.Routes = append(lc.Routes, leaseRoute{Dst: netip.MustParsePrefix("0.0.0.0/0"), Via: via})
	}
	if b := ack.GetOneOption(dhcpv4.OptionInterfaceMTU); len(b) == 2 {
		lc.MTU = int(binary.BigEndian.Uint16(b))
	}
	for _, d := range ack.DNS() {
		if a, ok := netip.AddrFromSlice(d.To4()); ok {
			lc.DNS = append(lc.DNS, a)
		}
	}
	lc.Lease = ack.IPAddressLeaseTime(time.Hour)
	return lc, nil
}

func (lc leaseConfig) String() string {
	s := lc.Addr.String()
	for _, r := range lc.Routes {
		if r.Dst.Bits() == 0 {
			s += " via " + r.Via.String()
		}
	}
	if lc.MTU > 0 {
		s += fmt.Sprintf(" mtu %d", lc.MTU)
	}
	return s + fmt.Sprintf(" lease %s", lc.Lease)
}

// DHCP is the network step of a cloud member: loopback up, then a
// lease on the first NIC, applied. It returns the leased address, which
// the member's config must name.
func DHCP(ctx context.Context) (netip.Addr, string, error) {
	if err := loopbackUp(); err != nil {
		return netip.Addr{}, "", err
	}
	link, err := waitForLink(File{})
	if err != nil {
		return netip.Addr{}, "", err
	}
	name := link.Attrs().Name
	if err := netlink.LinkSetUp(link); err != nil {
		return netip.Addr{}, "", fmt.Errorf("%s up: %w", name, err)
	}
	deadline := time.Now().Add(dhcpWait)
	var last error
	for attempt := 1; ; attempt++ {
		lease, err := requestLease(ctx, name)
		if err == nil {
			lc, err := leaseFrom(lease.ACK)
			if err == nil {
				if err = applyLease(link, lc); err == nil {
					console.Go("dhcp renew", func() { renewLoop(ctx, name, lease, lc) })
					return lc.Addr.Addr(), fmt.Sprintf("%s %s (DHCP)", name, lc), nil
				}
			}
		}
		last = err
		if time.Now().After(deadline) {
			return netip.Addr{}, "", fmt.Errorf("%s: no DHCP lease after %s (%d attempts): %v", name, dhcpWait, attempt, last)
		}
		select {
		case <-ctx.Done():
			return netip.Addr{}, "", ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func requestLease(ctx context.Context, ifname string) (*nclient4.Lease, error) {
	c, err := nclient4.New(ifname, nclient4.WithTimeout(3*time.Second), nclient4.WithRetry(3))
	if err != nil {
		return nil, fmt.Errorf("dhcp client on %s: %w", ifname, err)
	}
	defer c.Close()
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return c.Request(rctx, dhcpv4.WithRequestedOptions(dhcpv4.OptionInterfaceMTU, dhcpv4.OptionClasslessStaticRoute))
}

// applyLease sets the address (without expiry: the cloud gives the
// instance this address for its life, and renewals are best effort),
// the MTU, the routes (a gateway outside the subnet gets an on-link
// route first) and resolv.conf.
func applyLease(link netlink.Link, lc leaseConfig) error {
	name := link.Attrs().Name
	if lc.MTU >= 576 {
		if err := netlink.LinkSetMTU(link, lc.MTU); err != nil {
			return fmt.Errorf("%s: mtu %d: %w", name, lc.MTU, err)
		}
	}
	addr := &netlink.Addr{IPNet: prefixNet(lc.Addr)}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("%s: address %s: %w", name, lc.Addr, err)
	}
	for _, r := range lc.Routes {
		if r.Via.IsValid() && !r.Via.IsUnspecified() && !lc.Addr.Contains(r.Via) {
			onlink := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixNet(netip.PrefixFrom(r.Via, 32)), Scope: netlink.SCOPE_LINK}
			if err := netlink.RouteReplace(onlink); err != nil {
				return fmt.Errorf("%s: route to gateway %s: %w", name, r.Via, err)
			}
		}
	}
	for _, r := range lc.Routes {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixNet(r.Dst), Scope: netlink.SCOPE_UNIVERSE}
		if r.Via.IsValid() && !r.Via.IsUnspecified() {
			route.Gw = r.Via.AsSlice()
		} else {
			route.Scope = netlink.SCOPE_LINK
		}
		if r.Dst.Bits() == 0 {
			route.Dst = nil
		}
		if err := netlink.RouteReplace(route); err != nil {
			return fmt.Errorf("%s: route %s via %s: %w", name, r.Dst, r.Via, err)
		}
	}
	return writeResolvConf(lc.DNS)
}

// renewLoop renews the lease at half its time, for the life of the
// member; the address stays whatever the server says (a cloud does not
// move an instance's private IP), and a change is reported.
func renewLoop(ctx context.Context, ifname string, lease *nclient4.Lease, lc leaseConfig) {
	for {
		wait := max(lc.Lease/2, time.Minute)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		c, err := nclient4.New(ifname, nclient4.WithTimeout(3*time.Second), nclient4.WithRetry(3))
		if err != nil {
			logf("dhcp: renew: %v", err)
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		next, err := c.Renew(rctx, lease)
		cancel()
		c.Close()
		if err != nil {
			logf("dhcp: renew on %s: %v; the address stays", ifname, err)
			continue
		}
		nlc, err := leaseFrom(next.ACK)
		if err != nil {
			logf("dhcp: renew on %s: %v", ifname, err)
			continue
		}
		if nlc.Addr != lc.Addr {
			logf("dhcp: the server now offers %s instead of %s; this member keeps %s, its spec address", nlc.Addr, lc.Addr, lc.Addr)
			continue
		}
		lease, lc = next, nlc
	}
}

// CheckLeased compares the leased address with the member's spec
// address, as the config's .network files name it.
func CheckLeased(leased netip.Addr, files []File) (string, error) {
	var want []string
	for _, nf := range files {
		if nf.Address.Addr() == leased {
			return fmt.Sprintf("the leased address %s is this member's spec address", leased), nil
		}
		want = append(want, nf.Address.Addr().String())
	}
	return "", fmt.Errorf("the instance's address %s (DHCP) is not this member's spec address %s: start the instance with private IP %s, or boot it with that member's config", leased, strings.Join(want, ", "), strings.Join(want, ", "))
}
