// Package network brings the member onto its network and keeps its clock:
// the static address the config's .network files name (Configure), or on
// a cloud a DHCP lease that must match it (DHCP, CheckLeased); the host
// name; and the clock, set at boot from the platform's time source and
// the spec's NTP servers, never before the image's floor, and kept after.
//
// It reads only files the config wrote (/etc/systemd/network, the
// member's certificates for the clock's floor). It does not know which
// platform it runs on: the caller hands it the platform's own clock
// sources. It touches no disk and decides nothing about the cluster.
package network

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"etcdimg/firstboot/internal/console"
)

// Dir holds the systemd-networkd files the config wrote.
const Dir = "/etc/systemd/network"

// File is the subset of a systemd-networkd .network file the
// appliance applies: [Match] Name= globs, [Network] Address=, Gateway=,
// DNS=.
type File struct {
	Path    string
	Names   []string
	Address netip.Prefix
	Gateway netip.Addr
	DNS     []netip.Addr
	NTP     []netip.Addr
}

// ParseFile reads a .network file; directives outside the subset
// are errors.
func ParseFile(data []byte) (File, error) {
	var nf File
	err := WalkINI(data, func(n int, section, k, v string) error {
		var err error
		switch section + "." + k {
		case "Match.Name":
			nf.Names = append(nf.Names, strings.Fields(v)...)
		case "Network.Address":
			nf.Address, err = netip.ParsePrefix(v)
		case "Network.Gateway":
			nf.Gateway, err = netip.ParseAddr(v)
		case "Network.DNS":
			var a netip.Addr
			if a, err = netip.ParseAddr(v); err == nil {
				nf.DNS = append(nf.DNS, a)
			}
		case "Network.NTP":
			var a netip.Addr
			if a, err = netip.ParseAddr(v); err == nil {
				nf.NTP = append(nf.NTP, a)
			}
		default:
			return fmt.Errorf("line %d: [%s] %s= is not supported by the appliance (it applies [Match] Name, [Network] Address, Gateway, DNS, NTP)", n, section, k)
		}
		if err != nil {
			return fmt.Errorf("line %d: %s=%s: %w", n, k, v, err)
		}
		return nil
	})
	if err != nil {
		return nf, err
	}
	if !nf.Address.IsValid() {
		return nf, fmt.Errorf("no [Network] Address=")
	}
	return nf, nil
}

// matches reports whether an interface name matches the file's globs (no
// Name= matches every interface but loopback).
func (nf File) matches(name string) bool {
	if len(nf.Names) == 0 {
		return name != "lo"
	}
	for _, g := range nf.Names {
		if ok, _ := filepath.Match(g, name); ok {
			return true
		}
	}
	return false
}

// Configure brings up loopback and applies each .network file to
// the first interface it matches, waiting (bounded) for the NIC driver to
// publish the interface.
func Configure(files []File) (string, error) {
	if err := loopbackUp(); err != nil {
		return "", err
	}
	var done []string
	var dns []netip.Addr
	for _, nf := range files {
		link, err := waitForLink(nf)
		if err != nil {
			return "", fmt.Errorf("%s: %w", nf.Path, err)
		}
		name := link.Attrs().Name
		addr := &netlink.Addr{IPNet: prefixNet(nf.Address)}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return "", fmt.Errorf("%s: address %s: %w", name, nf.Address, err)
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return "", fmt.Errorf("%s up: %w", name, err)
		}
		desc := fmt.Sprintf("%s %s", name, nf.Address)
		if nf.Gateway.IsValid() {
			route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: nf.Gateway.AsSlice(), Scope: netlink.SCOPE_UNIVERSE}
			if err := netlink.RouteReplace(route); err != nil {
				return "", fmt.Errorf("%s: default route via %s: %w", name, nf.Gateway, err)
			}
			desc += " via " + nf.Gateway.String()
		}
		dns = append(dns, nf.DNS...)
		done = append(done, desc)
	}
	if err := writeResolvConf(dns); err != nil {
		return "", err
	}
	return strings.Join(done, "; "), nil
}

// writeResolvConf names the name servers in /etc/resolv.conf; with none
// it leaves the file alone.
func writeResolvConf(dns []netip.Addr) error {
	if len(dns) == 0 {
		return nil
	}
	var b strings.Builder
	for _, a := range dns {
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	return os.WriteFile("/etc/resolv.conf", []byte(b.String()), 0o644)
}

// prefixNet is p as netlink wants an address.
func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// loopbackUp brings up lo, which etcd and the appliance's own services
// listen on beside the member's address.
func loopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

// ReadFiles reads the config's .network files, in name order.
func ReadFiles() ([]File, error) {
	paths, _ := filepath.Glob(filepath.Join(Dir, "*.network"))
	slices.Sort(paths)
	if len(paths) == 0 {
		return nil, fmt.Errorf("no %s/*.network file in the config; the member needs its address", Dir)
	}
	var out []File
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		nf, err := ParseFile(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		nf.Path = p
		out = append(out, nf)
	}
	return out, nil
}

// linkWait bounds how long the network waits for the NIC driver to
// publish an interface: the same bound as the data disk's device wait.
const linkWait = 10 * time.Second

func waitForLink(nf File) (netlink.Link, error) {
	deadline := time.Now().Add(linkWait)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, err
		}
		slices.SortFunc(links, func(a, b netlink.Link) int { return a.Attrs().Index - b.Attrs().Index })
		for _, l := range links {
			if l.Attrs().Flags&net.FlagLoopback == 0 && nf.matches(l.Attrs().Name) {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no network interface matches Name=%s", strings.Join(nf.Names, " "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// SetHostname sets the host name the config wrote to /etc/hostname.
func SetHostname() (string, error) {
	b, err := os.ReadFile("/etc/hostname")
	if err != nil {
		return "", err
	}
	name := strings.TrimSpace(string(b))
	if err := unix.Sethostname([]byte(name)); err != nil {
		return "", err
	}
	return name, nil
}

// logf prints one line to the console.
func logf(format string, args ...any) { console.Logf(format, args...) }
