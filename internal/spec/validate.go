package spec

import (
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// dnsLabel is an RFC 1123 label: what a hostname, an etcd member name, a
// certificate DNS SAN and a file name can all safely be.
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidClientName says why name cannot be an application client of c:
// it is its certificate's CN and its etcd user, so it must be a DNS
// label that is neither root nor a member's name.
func (c *Cluster) ValidClientName(name string) error {
	if !dnsLabel.MatchString(name) {
		return fmt.Errorf("client name %q: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit", name)
	}
	if whose, ok := reservedNames[name]; ok {
		return fmt.Errorf("client name %q is %s; pick another", name, whose)
	}
	if _, ok := c.Member(name); ok {
		return fmt.Errorf("client name %q is a member's name (members hold the root role); pick another", name)
	}
	return nil
}

// Validate checks the whole spec and returns the first problem as one line
// that names the field and says how to fix it.
func (c *Cluster) Validate() error {
	if !dnsLabel.MatchString(c.Name) {
		return fmt.Errorf("spec: name %q is not a valid cluster name; use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit", c.Name)
	}
	prefix, err := netip.ParsePrefix(c.Network.CIDR)
	if err != nil || !prefix.Addr().Is4() {
		return fmt.Errorf("spec: network.cidr %q is not an IPv4 CIDR; write it like 192.168.2.0/24", c.Network.CIDR)
	}
	if prefix != prefix.Masked() {
		return fmt.Errorf("spec: network.cidr %s has host bits set; write the network address, %s", prefix, prefix.Masked())
	}
	if prefix.Bits() > 30 {
		return fmt.Errorf("spec: network.cidr %s is too small for a cluster; use a /30 or larger network", prefix)
	}
	var gw netip.Addr
	if c.Network.Gateway != "" {
		gw, err = netip.ParseAddr(c.Network.Gateway)
		if err != nil || !gw.Is4() {
			return fmt.Errorf("spec: network.gateway %q is not an IPv4 address; write it like 192.168.2.1, or leave it out for no default route", c.Network.Gateway)
		}
		if !prefix.Contains(gw) {
			return fmt.Errorf("spec: network.gateway %s is outside network.cidr %s; pick an address inside it", gw, prefix)
		}
		if gw == prefix.Addr() || gw == broadcast(prefix) {
			return fmt.Errorf("spec: network.gateway %s is the network or broadcast address of %s; pick a host address", gw, prefix)
		}
	}
	for i, d := range c.Network.DNS {
		if a, err := netip.ParseAddr(d); err != nil || !a.Is4() {
			return fmt.Errorf("spec: network.dns[%d] %q is not an IPv4 address; write it like 192.168.2.1", i, d)
		} else if !usableHost(a) {
			return fmt.Errorf("spec: network.dns[%d] %s is not a server's address (unspecified, broadcast or multicast); write the resolver's address", i, a)
		}
	}
	for i, d := range c.Network.NTP {
		if a, err := netip.ParseAddr(d); err != nil || !a.Is4() || !usableHost(a) {
			return fmt.Errorf("spec: network.ntp[%d] %q is not an IPv4 address; write the NTP server's address, like 192.168.2.1", i, d)
		}
	}

	switch n := len(c.Members); {
	case n == 0:
		return fmt.Errorf("spec: members is empty; list at least one member (3 or 5 tolerate failures)")
	case n > MaxMembers:
		return fmt.Errorf("spec: members has %d entries, more than %d; etcd gains no availability past 7, use 3, 5 or 7", n, MaxMembers)
	}
	names := map[string]int{}
	ips := map[netip.Addr]int{}
	for i, m := range c.Members {
		if !dnsLabel.MatchString(m.Name) {
			return fmt.Errorf("spec: members[%d].name %q is not a valid member name; use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit (it is the etcd name and the hostname)", i, m.Name)
		}
		if whose, ok := reservedNames[m.Name]; ok {
			return fmt.Errorf("spec: members[%d].name %q is %s; pick another name", i, m.Name, whose)
		}
		if j, dup := names[m.Name]; dup {
			return fmt.Errorf("spec: members[%d].name %q is also members[%d].name; give every member its own name", i, m.Name, j)
		}
		names[m.Name] = i
		ip, err := netip.ParseAddr(m.IP)
		if err != nil || !ip.Is4() {
			return fmt.Errorf("spec: members[%d].ip %q is not an IPv4 address; write it like 192.168.2.51", i, m.IP)
		}
		if !prefix.Contains(ip) {
			return fmt.Errorf("spec: members[%d].ip %s is outside network.cidr %s; pick an address inside it", i, ip, prefix)
		}
		if ip == prefix.Addr() || (!ip.IsLoopback() && ip == broadcast(prefix)) {
			return fmt.Errorf("spec: members[%d].ip %s is the network or broadcast address of %s; pick a host address", i, ip, prefix)
		}
		if ip == gw {
			return fmt.Errorf("spec: members[%d].ip %s is network.gateway; pick another address", i, ip)
		}
		if j, dup := ips[ip]; dup {
			return fmt.Errorf("spec: members[%d].ip %s is also members[%d].ip; give every member its own address", i, ip, j)
		}
		ips[ip] = i
	}

	w := c.written
	if err := c.Etcd.validate(w); err != nil {
		return err
	}
	if m := c.Maintenance; m.Check.D() < 0 || (m.Check != 0 && m.Check.D() < 10*time.Second) || m.Check.D()%time.Second != 0 {
		return fmt.Errorf("spec: maintenance.check %s: write 0 (off) or a whole number of seconds from 10s, such as 1m", w.dur("maintenance.check", m.Check))
	}
	if p := c.Maintenance.DefragFreePercent; p < 1 || p > 90 {
		return fmt.Errorf("spec: maintenance.defragFreePercent %d: write a share of the quota from 1 to 90 (default 20); a member is defragmented when that much of it is free pages", p)
	}
	if c.Backup.Interval.D() < time.Minute {
		return fmt.Errorf("spec: backup.interval %s is under 1m; back up at most once a minute (e.g. 1h)", w.dur("backup.interval", c.Backup.Interval))
	}
	if c.Backup.Retain < 1 {
		return fmt.Errorf("spec: backup.retain %d must be at least 1; it is how many snapshots each member keeps", c.Backup.Retain)
	}
	if d := c.Backup.MaxAge.D(); d < 0 {
		return fmt.Errorf("spec: backup.maxAge %s is negative; write how long backups are kept, at least backup.interval (e.g. 720h), or leave maxAge out", w.dur("backup.maxAge", c.Backup.MaxAge))
	} else if d != 0 && d < c.Backup.Interval.D() {
		return fmt.Errorf("spec: backup.maxAge %s is shorter than backup.interval %s; keep backups at least one interval (or leave maxAge out)", w.dur("backup.maxAge", c.Backup.MaxAge), w.dur("backup.interval", c.Backup.Interval))
	}
	if s3 := c.Backup.S3; s3 != nil {
		if err := s3.validate(); err != nil {
			return err
		}
	}
	if err := c.PKI.validate(w); err != nil {
		return err
	}
	return c.Upgrade.validate(w)
}

var bucketName = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

func (s *S3) validate() error {
	u, err := url.Parse(s.Endpoint)
	switch {
	// Neither branch quotes the endpoint: what it carries there may be
	// a key.
	case strings.Contains(s.Endpoint, "@") || (err == nil && u.User != nil):
		return fmt.Errorf("spec: backup.s3.endpoint holds a user name or password (user:password@host); put the keys in backup.s3.credentialsFile and write the endpoint as http(s)://host[:port]")
	case strings.ContainsAny(s.Endpoint, "?#"):
		return fmt.Errorf("spec: backup.s3.endpoint has a query or a fragment (?… or #…), which the members would not use; write it as http(s)://host[:port]")
	case s.Endpoint == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/"):
		return fmt.Errorf("spec: backup.s3.endpoint %q must be http(s)://host[:port] as the members reach it (e.g. https://s3.example.net)", s.Endpoint)
	case !bucketName.MatchString(s.Bucket):
		return fmt.Errorf("spec: backup.s3.bucket %q is not an S3 bucket name; use 3-63 lowercase letters, digits, '.' and '-'", s.Bucket)
	case strings.HasPrefix(s.Prefix, "/"):
		return fmt.Errorf("spec: backup.s3.prefix %q must not start with '/'; object keys are relative (e.g. etcd/)", s.Prefix)
	case s.CredentialsFile == "":
		return fmt.Errorf("spec: backup.s3.credentialsFile is empty; name a file with AWS_ACCESS_KEY_ID= and AWS_SECRET_ACCESS_KEY= lines")
	}
	return nil
}

// maxSnapshotCount bounds etcd.snapshotCount: etcd keeps up to this many
// raft entries in memory between snapshots (its default is 10,000).
const maxSnapshotCount = 10_000_000

// usableHost reports whether a is an address a server can have.
func usableHost(a netip.Addr) bool {
	return !a.IsUnspecified() && !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

func (e Etcd) validate(w written) error {
	hb, el := e.HeartbeatInterval.D(), e.ElectionTimeout.D()
	switch {
	case hb < time.Millisecond || hb%time.Millisecond != 0:
		return fmt.Errorf("spec: etcd.heartbeatInterval %s must be a whole number of milliseconds, at least 1ms (etcd's default is 100ms)", w.dur("etcd.heartbeatInterval", e.HeartbeatInterval))
	case el%time.Millisecond != 0:
		return fmt.Errorf("spec: etcd.electionTimeout %s must be a whole number of milliseconds (etcd's default is 1000ms)", w.dur("etcd.electionTimeout", e.ElectionTimeout))
	case el < 5*hb:
		return fmt.Errorf("spec: etcd.electionTimeout %s is under 5 × etcd.heartbeatInterval (%s); raise it to at least %s", w.dur("etcd.electionTimeout", e.ElectionTimeout), w.dur("etcd.heartbeatInterval", e.HeartbeatInterval), Duration(5*hb))
	case el > 50*time.Second:
		return fmt.Errorf("spec: etcd.electionTimeout %s is over etcd's limit of 50s; lower it", w.dur("etcd.electionTimeout", e.ElectionTimeout))
	case e.SnapshotCount == 0:
		return fmt.Errorf("spec: etcd.snapshotCount must be at least 1 (the runbook uses 5000)")
	case e.SnapshotCount > maxSnapshotCount:
		return fmt.Errorf("spec: etcd.snapshotCount %d is over %d: etcd would keep that many raft entries in memory; the runbook uses 5000", e.SnapshotCount, maxSnapshotCount)
	case e.AutoCompactionRetention.D() < 0 || (e.AutoCompactionRetention != 0 && e.AutoCompactionRetention.D() < time.Minute) || e.AutoCompactionRetention.D()%time.Second != 0:
		return fmt.Errorf("spec: etcd.autoCompactionRetention %s: write 0 (off) or a whole number of seconds from 1m, such as 1h", w.dur("etcd.autoCompactionRetention", e.AutoCompactionRetention))
	case e.BackendQuota < 16*MiB:
		return fmt.Errorf("spec: etcd.backendQuota %s is under 16MiB; etcd's default is 2GiB", e.BackendQuota)
	case e.BackendQuota > 100*GiB:
		return fmt.Errorf("spec: etcd.backendQuota %s is over 100GiB; etcd recommends at most 8GiB", e.BackendQuota)
	}
	return nil
}

func (p PKI) validate(w written) error {
	switch p.KeyAlgorithm {
	case KeyECDSAP256, KeyRSA2048:
	default:
		return fmt.Errorf("spec: pki.keyAlgorithm %q is not supported; use %s or %s", p.KeyAlgorithm, KeyECDSAP256, KeyRSA2048)
	}
	switch {
	case p.CALifetime.D() < 24*time.Hour:
		return fmt.Errorf("spec: pki.caLifetime %s is under a day; use something like 87600h (10 years)", w.dur("pki.caLifetime", p.CALifetime))
	case p.CertLifetime.D() < 24*time.Hour:
		return fmt.Errorf("spec: pki.certLifetime %s is under a day; use something like 8760h (1 year)", w.dur("pki.certLifetime", p.CertLifetime))
	case p.CertLifetime > p.CALifetime:
		return fmt.Errorf("spec: pki.certLifetime %s is longer than pki.caLifetime %s; certificates cannot outlive their CA, shorten it", w.dur("pki.certLifetime", p.CertLifetime), w.dur("pki.caLifetime", p.CALifetime))
	case p.TLSMinVersion != "1.2" && p.TLSMinVersion != "1.3":
		return fmt.Errorf("spec: pki.tlsMinVersion %q is not supported; use \"1.2\" (AEAD cipher suites only) or \"1.3\"", p.TLSMinVersion)
	}
	return nil
}

func (u Upgrade) validate(w written) error {
	switch {
	case u.GoodAfter.D() <= 0:
		return fmt.Errorf("spec: upgrade.goodAfter %s must be positive; write how long a member on a new image must stay a caught-up voter before the image is kept (e.g. 30s)", w.dur("upgrade.goodAfter", u.GoodAfter))
	case u.TrialTimeout.D() <= 0:
		return fmt.Errorf("spec: upgrade.trialTimeout %s must be positive; write how long a trial boot of a new image may take to become good (e.g. 10m)", w.dur("upgrade.trialTimeout", u.TrialTimeout))
	case u.GoodAfter >= u.TrialTimeout:
		return fmt.Errorf("spec: upgrade.goodAfter %s is not shorter than upgrade.trialTimeout %s; a trial boot could never become good: shorten goodAfter or lengthen trialTimeout", w.dur("upgrade.goodAfter", u.GoodAfter), w.dur("upgrade.trialTimeout", u.TrialTimeout))
	case u.Tries < 1 || u.Tries > MaxUpgradeTries:
		return fmt.Errorf("spec: upgrade.tries %d is out of range; write how many times a new image is booted before falling back, 1 to %d (default 3)", u.Tries, MaxUpgradeTries)
	}
	return nil
}

// Warnings lists what is allowed but probably not meant.
func (c *Cluster) Warnings() []string {
	var w []string
	if n := len(c.Members); n%2 == 0 {
		w = append(w, fmt.Sprintf("spec: %d members tolerate %d failed member(s), as %d do; an even count adds load, not fault tolerance", n, (n-1)/2, n-1))
	}
	if c.Etcd.BackendQuota > 8*GiB {
		w = append(w, fmt.Sprintf("spec: etcd.backendQuota %s is over the 8GiB etcd recommends", c.Etcd.BackendQuota))
	}
	if c.Etcd.AutoCompactionRetention == 0 {
		w = append(w, "spec: etcd.autoCompactionRetention is 0: the members never compact, and only a root client can (not the Kubernetes API server's role); the database grows until etcd.backendQuota stops writes")
	}
	return w
}

func broadcast(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// written maps a field's path (backup.maxAge) to its value as the spec
// file wrote it.
type written map[string]string

// dur is the duration d of the field at path as written, if it was
// written there, else as etcdimg writes it.
func (w written) dur(path string, d Duration) string {
	if v, ok := w[path]; ok {
		if p, err := ParseDuration(v); err == nil && p == d {
			return strings.TrimSpace(v)
		}
	}
	return d.String()
}
