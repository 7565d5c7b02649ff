package network

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/beevik/ntp"
	"golang.org/x/sys/unix"

	"etcdimg/ignition/ign"
)

// A ClockSource tells how far this machine's clock is off, answering
// within timeout: sources are asked in parallel, and a round of them must
// end within a bound (boot waits for it).
type ClockSource struct {
	Name   string
	Offset func(timeout time.Duration) (time.Duration, error)
	addr   string // an NTP server's address, asked once however often named
}

// NTP is the NTP server at addr, named what and its address.
func NTP(what, addr string) ClockSource {
	s := ntpSource(what+" "+addr, net.JoinHostPort(addr, "123"))
	s.addr = addr
	return s
}

// HypervPTP is the host's clock through Hyper-V's PTP device (Azure's):
// a local device, it answers at once, or not at all.
func HypervPTP(name string) ClockSource {
	return ClockSource{Name: name, Offset: func(time.Duration) (time.Duration, error) { return hypervPTPOffset() }}
}

// ClockSources are the platform's own time sources first (own: AWS's
// Time Sync Service, GCP's metadata server, Azure's host clock through
// Hyper-V's PTP device), then the NTP servers the spec names. An address
// named twice is asked once: after boot a step needs two sources that
// agree, and one server must not count as two.
func ClockSources(own []ClockSource, servers []netip.Addr) []ClockSource {
	var out []ClockSource
	seen := map[string]bool{}
	add := func(s ClockSource) {
		if s.addr != "" {
			if seen[s.addr] {
				return
			}
			seen[s.addr] = true
		}
		out = append(out, s)
	}
	for _, s := range own {
		add(s)
	}
	for _, a := range servers {
		add(NTP("NTP", a.Unmap().String()))
	}
	return out
}

// ntpTimeout is how long one NTP exchange may take. It is also the bound
// on a round that asks every source at once: at boot, more than one
// source is asked in parallel and the boot waits no longer than this for
// them all, retries included.
const ntpTimeout = 2 * time.Second

func ntpSource(name, hostport string) ClockSource {
	return ClockSource{Name: name, Offset: func(timeout time.Duration) (time.Duration, error) { return sntpOffset(hostport, timeout) }}
}

// sntpOffset asks an NTP server once and returns the clock offset it
// measures. github.com/beevik/ntp does the protocol: a random transmit
// stamp the answer must echo, time stamps read in NTP era 1 from
// 2036-02-07 on, and RFC 5905's sanity checks (stratum, kiss of death,
// leap indicator, freshness, dispersion). The local time is clockNow's,
// so that tests can play at any date; that costs the kernel's receive
// time stamps, microseconds that SNTP cannot use anyway.
func sntpOffset(addr string, timeout time.Duration) (time.Duration, error) {
	r, err := ntp.QueryWithOptions(addr, ntp.QueryOptions{Timeout: timeout, GetSystemTime: clockNow})
	if err != nil {
		return 0, fmt.Errorf("query %s: %w", addr, err)
	}
	if err := r.Validate(); err != nil {
		return 0, fmt.Errorf("answer from %s: %w", addr, err)
	}
	return r.ClockOffset, nil
}

// hypervPTPOffset reads Hyper-V's PTP clock (the host's time, which
// Azure keeps synchronised), published by hv_utils as a PTP device
// whose clock_name is "hyperv".
func hypervPTPOffset() (time.Duration, error) {
	names, _ := filepath.Glob("/sys/class/ptp/ptp*/clock_name")
	for _, n := range names {
		b, _ := os.ReadFile(n)
		if strings.TrimSpace(string(b)) != "hyperv" {
			continue
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(n))
		f, err := os.Open(dev)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		// A dynamic POSIX clock's ID is made from its file descriptor.
		id := int32((^int(f.Fd()))<<3 | 3)
		var ts unix.Timespec
		before := clockNow()
		if err := unix.ClockGettime(id, &ts); err != nil {
			return 0, fmt.Errorf("%s: %w", dev, err)
		}
		after := clockNow()
		mid := before.Round(0).Add(after.Sub(before) / 2)
		return time.Unix(ts.Unix()).Sub(mid), nil
	}
	return 0, errors.New("no Hyper-V PTP clock")
}

// How far the clock may be moved, and on whose word.
const (
	// clockStep is the offset below which the boot leaves the clock as
	// it is (KeepClock slews it later).
	clockStep = 100 * time.Millisecond
	// clockStepBound is the largest offset one source may correct after
	// boot, and it is slewed, not stepped: a larger one is stepped only
	// when two sources agree on it, and they are most of those that
	// answered (vote). An unauthenticated answer could
	// otherwise move a running member by any amount, every 15 minutes
	// (a future-dated backup, retention by a wrong age, certificates
	// "expired" or "not yet valid").
	clockStepBound = time.Second
	// clockAgree is how close two sources' offsets must be to agree:
	// far above SNTP's noise (milliseconds), far below what matters.
	clockAgree = 250 * time.Millisecond
	// clockSlewMin is the offset below which a slew is not worth asking
	// for: one SNTP sample's noise.
	clockSlewMin = 10 * time.Millisecond
)

// codeFloor is a time this code certainly runs after: it was written in
// November 2026, so no build of it runs earlier. It stands in when the
// member's certificates cannot be read.
var codeFloor = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// ClockFloor is the earliest time the clock may be set to: the newest
// NotBefore among the certificates in the member's config under root
// (made when its image was built, so the true time is later), or
// codeFloor when that is later. The image records no build time of its
// own (its FAT time stamps are a fixed 2020, the binary carries no VCS
// stamp), and the certificates are the better floor anyway: before it,
// the member's own certificate is not yet valid, so no clock earlier
// than it can work.
func ClockFloor(root string) time.Time {
	floor := codeFloor
	for _, p := range []string{ign.CACertPath, ign.CertPath} {
		rest, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			continue
		}
		for {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			if b.Type != "CERTIFICATE" {
				continue
			}
			if c, err := x509.ParseCertificate(b.Bytes); err == nil && c.NotBefore.After(floor) {
				floor = c.NotBefore
			}
		}
	}
	return floor
}

// ntpEra is one NTP era: time stamps count 2^32 seconds (about 136
// years) and start again; the era is not on the wire.
const ntpEra = time.Duration(1<<32) * time.Second

// nearestEra moves t by whole NTP eras to the one nearest the floor.
// github.com/beevik/ntp reads time stamps in 1970-2106; a fixed window
// would fail again some day, while an image's floor (its build time) is
// always within decades of the true time. A zero floor leaves t alone.
func nearestEra(t, floor time.Time) time.Time {
	if floor.IsZero() {
		return t
	}
	for t.Sub(floor) > ntpEra/2 {
		t = t.Add(-ntpEra)
	}
	for floor.Sub(t) > ntpEra/2 {
		t = t.Add(ntpEra)
	}
	return t
}

// errBeforeFloor marks a source whose time is before the image's floor:
// it is wrong, and asking it again will not help.
var errBeforeFloor = errors.New("before the image's floor")

// measure asks s for the clock's offset, reads the source's time in the
// NTP era nearest the floor and refuses a time before the floor.
func measure(s ClockSource, floor time.Time, timeout time.Duration) (time.Duration, error) {
	off, err := s.Offset(timeout)
	if err != nil {
		return 0, err
	}
	now := clockNow().Round(0)
	t := nearestEra(now.Add(off), floor)
	if t.Before(floor) {
		return 0, fmt.Errorf("reads %s, %w %s", t.UTC().Format(time.RFC3339), errBeforeFloor, floor.UTC().Format(time.RFC3339))
	}
	return t.Sub(now), nil
}

// measureAll asks every source at once, each up to tries times, and
// returns the sane answers and the failures, both in the sources' order.
// With a bound, the round ends within it: each try gets the time left,
// shared with the tries still to come, so that a lost packet can be
// asked again. With none, each try gets ntpTimeout. A time before the
// floor is not asked again: the source is wrong, not unlucky.
//
// With early, the round ends as soon as a strict majority of the sources
// agree (vote): the rest cannot outvote them, and the boot need not wait
// out a silent server. A query still under way then ends by its own
// timeout, unheard, and is not tried again.
func measureAll(sources []ClockSource, floor time.Time, tries int, bound time.Duration, early bool) (got []clockSample, failed []string) {
	type result struct {
		i   int
		off time.Duration
		err error
	}
	deadline := time.Now().Add(bound)
	// Buffered: a query that ends after an early return must not block.
	results := make(chan result, len(sources))
	stop := make(chan struct{})
	defer close(stop)
	for i, s := range sources {
		go func() {
			r := result{i: i, err: fmt.Errorf("no time left to ask within %s", bound)}
			for n := range tries {
				timeout := ntpTimeout
				if bound > 0 {
					timeout = time.Until(deadline) / time.Duration(tries-n)
				}
				select {
				case <-stop:
					timeout = 0
				default:
				}
				if timeout <= 0 {
					break
				}
				if r.off, r.err = measure(s, floor, timeout); r.err == nil || errors.Is(r.err, errBeforeFloor) {
					break
				}
			}
			results <- r
		}()
	}
	// Every source honours its timeout, so this wait is the bound.
	answers := make([]*result, len(sources))
	for range sources {
		r := <-results
		answers[r.i] = &r
		got, failed = nil, nil
		for i, a := range answers {
			switch {
			case a == nil:
			case a.err != nil:
				failed = append(failed, fmt.Sprintf("%s: %v", sources[i].Name, a.err))
			default:
				got = append(got, clockSample{sources[i].Name, a.off})
			}
		}
		if v, ok := vote(got); early && ok && 2*v.agree > len(sources) {
			break
		}
	}
	return got, failed
}

// A clockVote is what the sources that answered agree on.
type clockVote struct {
	name     string        // who agrees: "A", "A and B", "A, B and C"
	off      time.Duration // their mean offset
	agree    int           // how many they are
	outliers []clockSample // the answers that disagree with them
}

// vote finds the offset the answers agree on: the largest group within
// clockAgree of one of its members, when it has at least two and no
// other group as large stands apart from it (two against two is no
// answer), or the only answer there is. One server that lies is then
// outvoted by two that do not, wherever it is in the list; a majority
// that lies is not caught, nor can it be without a trusted source.
//
// An offset of clockStepBound or more also needs the group to be a
// strict majority of the answers. Being the largest group is not enough:
// right servers can be more than clockAgree apart (a congested path, a
// server not yet settled), and each is then a group of one, so two liars
// that agree would outnumber, say, two right servers 300 ms apart, and
// step a right clock by whatever they say. A majority cannot be outvoted
// by the rest however those rest are scattered. A smaller offset keeps
// the weaker rule: it is slewed after boot, and at boot it costs at most
// a second, which the upkeep corrects.
func vote(got []clockSample) (clockVote, bool) {
	if len(got) == 0 {
		return clockVote{}, false
	}
	groups := make([][]int, len(got))
	best := 0
	for i, a := range got {
		for j, b := range got {
			if (a.off - b.off).Abs() <= clockAgree {
				groups[i] = append(groups[i], j)
			}
		}
		if len(groups[i]) > len(groups[best]) {
			best = i
		}
	}
	g := groups[best]
	if len(got) > 1 {
		if len(g) < 2 {
			return clockVote{}, false
		}
		for _, h := range groups {
			if len(h) == len(g) && !slices.ContainsFunc(h, func(j int) bool { return slices.Contains(g, j) }) {
				return clockVote{}, false
			}
		}
	}
	var v clockVote
	var names []string
	var sum time.Duration
	for i, s := range got {
		if slices.Contains(g, i) {
			names = append(names, s.name)
			sum += s.off
		} else {
			v.outliers = append(v.outliers, s)
		}
	}
	v.name, v.off, v.agree = joinNames(names), sum/time.Duration(len(g)), len(g)
	if v.off.Abs() >= clockStepBound && 2*v.agree <= len(got) {
		return clockVote{}, false
	}
	return v, true
}

func joinNames(names []string) string {
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

// outlierNote names the answers the vote left out and how far each is
// from the agreed time, so that a server that lies can be found and
// taken out of the spec.
func (v clockVote) outlierNote() string {
	var says []string
	for _, s := range v.outliers {
		d, way := s.off-v.off, "ahead of"
		if d < 0 {
			d, way = -d, "behind"
		}
		says = append(says, fmt.Sprintf("%s reads %s %s", s.name, d.Round(time.Millisecond), way))
	}
	return strings.Join(says, ", ") + fmt.Sprintf(" %s: ignored", v.name)
}

// saying is the answers, for a log: "A finds the clock off by 1s, B by 2s".
func saying(got []clockSample) string {
	var says []string
	for i, s := range got {
		if i == 0 {
			says = append(says, fmt.Sprintf("%s finds the clock off by %s", s.name, s.off.Round(time.Millisecond)))
		} else {
			says = append(says, fmt.Sprintf("%s by %s", s.name, s.off.Round(time.Millisecond)))
		}
	}
	return strings.Join(says, ", ")
}

// SyncClock sets the clock at boot, when it may read 1970 or whatever
// the hardware kept, by any amount but never to before the floor. One
// source alone is followed once it answers sanely (asked up to three
// times). More are asked all at once, within ntpTimeout, and the clock
// is stepped only to what they agree on (vote: a step of clockStepBound
// or more needs most of the answers): the first in the list is not
// trusted more, since one server that lies would otherwise set the clock
// for good (after boot a far step needs two that agree). When
// only one of them answers, it is followed as if it were the only one:
// nothing says it lies, and a clock left at the floor may be months
// behind; the upkeep asks them all again. With no answer to follow the
// clock is still raised to the floor, where the member's certificates
// are valid. No answer is not fatal: the boot goes on and says so.
func SyncClock(sources []ClockSource, floor time.Time) (string, error) {
	bound := time.Duration(0) // one source: each of its tries gets ntpTimeout
	if len(sources) > 1 {
		bound = ntpTimeout
	}
	got, failed := measureAll(sources, floor, 3, bound, true)
	var what string
	switch v, ok := vote(got); {
	case len(sources) == 0:
		what = "no time source on this platform or in the spec (network.ntp)"
	case len(got) == 0:
		what = "no time source answered (" + strings.Join(failed, "; ") + ")"
	case !ok:
		what = saying(got) + ": they disagree, so none is followed (name more NTP servers in the spec's network.ntp)"
	default:
		note := ""
		if len(v.outliers) > 0 {
			note = "; " + v.outlierNote()
		}
		if v.agree == 1 && len(failed) > 0 {
			note = "; the only answer (" + strings.Join(failed, "; ") + ")"
		}
		if v.off.Abs() < clockStep {
			return fmt.Sprintf("%s: off by %s, left as it is%s", v.name, v.off.Round(time.Millisecond), note), nil
		}
		if err := stepClock(v.off); err != nil {
			return "", fmt.Errorf("step the clock by %s (%s): %w", v.off, v.name, err)
		}
		return fmt.Sprintf("%s: stepped by %s to %s%s", v.name, v.off.Round(time.Millisecond), clockNow().UTC().Format(time.RFC3339), note), nil
	}
	if now := clockNow(); now.Before(floor) {
		if err := stepClock(floor.Sub(now)); err != nil {
			return "", fmt.Errorf("%s; raise the clock from %s to the image's floor %s: %w", what, now.UTC().Format(time.RFC3339), floor.UTC().Format(time.RFC3339), err)
		}
		return fmt.Sprintf("%s: raised the clock from %s to the image's floor %s", what, now.UTC().Format(time.RFC3339), floor.UTC().Format(time.RFC3339)), nil
	}
	return what + ": keeping the hardware clock", nil
}

// The system clock, behind function values so that tests never set the
// host's clock.
var (
	clockNow  = time.Now
	stepClock = stepSystemClock
	slewClock = slewSystemClock
)

// stepSystemClock steps the clock by off with adjtimex's ADJ_SETOFFSET:
// the kernel adds it at once, with no gap between reading the clock and
// setting it. A slew under way is cancelled first: it would go on
// correcting an offset the step has just removed.
func stepSystemClock(off time.Duration) error {
	if err := slewSystemClock(0); err != nil {
		return fmt.Errorf("cancel the slew under way: %w", err)
	}
	tx := setOffsetTimex(off)
	if _, err := unix.Adjtimex(&tx); err != nil {
		return fmt.Errorf("adjtimex ADJ_SETOFFSET %s: %w", off, err)
	}
	return nil
}

// setOffsetTimex is the adjtimex request to step the clock by off. The
// kernel wants the microseconds non-negative: -1.5 s is -2 s + 500000 µs.
// (unix.NsecToTimeval rounds negative offsets a microsecond off.)
func setOffsetTimex(off time.Duration) unix.Timex {
	us := off.Microseconds()
	sec, usec := us/1e6, us%1e6
	if usec < 0 {
		sec, usec = sec-1, usec+1e6
	}
	return unix.Timex{Modes: unix.ADJ_SETOFFSET, Time: unix.Timeval{Sec: sec, Usec: usec}}
}

// slewSystemClock makes the kernel correct the clock by off gradually
// (adjtime(3)'s ADJ_OFFSET_SINGLESHOT: at most 0.5 ms a second, never
// backwards), replacing any correction still under way.
func slewSystemClock(off time.Duration) error {
	tx := unix.Timex{Modes: unix.ADJ_OFFSET_SINGLESHOT, Offset: off.Microseconds()}
	if _, err := unix.Adjtimex(&tx); err != nil {
		return fmt.Errorf("adjtimex ADJ_OFFSET_SINGLESHOT %s: %w", off, err)
	}
	return nil
}

// KeepClock measures again every interval for the life of the member and
// keeps the clock right (clockKeeper.check).
func KeepClock(ctx context.Context, sources []ClockSource, floor time.Time, interval time.Duration) {
	k := &clockKeeper{sources: sources, floor: floor}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
		if msg := k.check(); msg != "" {
			logf("clock: %s", msg)
		}
	}
}

// A clockKeeper is the clock's upkeep after boot.
type clockKeeper struct {
	sources []ClockSource
	floor   time.Time
	// warned is the kind of trouble last logged: each is logged once,
	// not every 15 minutes, until the clock is right again.
	warned string
}

type clockSample struct {
	name string
	off  time.Duration
}

// check asks every source once, all at once, and corrects the clock,
// returning what to log:
//   - two or more that agree (vote) slew the clock by their mean, or step
//     it when that is clockStepBound or more (then they must be most of
//     the answers, or vote finds no agreement); an answer that disagrees
//     with them is named, once. Every source is asked every time (a few
//     packets every 15 minutes): asking only the first while it found
//     the clock near would follow a first source that lies, and never
//     hear the others say so;
//   - otherwise, when every answer is within clockStepBound, the first
//     is slewed to (the usual case with one source);
//   - otherwise the clock is not stepped: a source that finds it within
//     clockStepBound is slewed to, and the trouble is logged once.
func (k *clockKeeper) check() string {
	got, failed := measureAll(k.sources, k.floor, 1, ntpTimeout, false)
	if len(got) == 0 {
		return k.warn("none", "no time source answered ("+strings.Join(failed, "; ")+"): the clock is left as it is")
	}
	if v, ok := vote(got); ok && v.agree >= 2 {
		stepped := ""
		if v.off.Abs() < clockStepBound {
			if err := slewBy(v.off); err != nil {
				return err.Error()
			}
		} else {
			if err := stepClock(v.off); err != nil {
				return fmt.Sprintf("step by %s: %v", v.off, err)
			}
			stepped = fmt.Sprintf("%s agree the clock was off by %s; stepped", v.name, v.off.Round(time.Millisecond))
		}
		if len(v.outliers) == 0 {
			if stepped != "" {
				k.warned = ""
				return stepped
			}
			return k.resolved(clockSample{v.name, v.off})
		}
		var names []string
		for _, s := range v.outliers {
			names = append(names, s.name)
		}
		kind := "outlier " + strings.Join(names, ", ")
		if stepped != "" {
			k.warned = kind
			return stepped + "; " + v.outlierNote()
		}
		return k.warn(kind, v.outlierNote())
	}
	if !slices.ContainsFunc(got, func(s clockSample) bool { return s.off.Abs() >= clockStepBound }) {
		if err := slewBy(got[0].off); err != nil {
			return err.Error()
		}
		return k.resolved(got[0])
	}
	msg := saying(got) + fmt.Sprintf("; not stepped: after boot a step of %s or more needs two time sources, most of those that answer, that agree within %s (name more NTP servers in the spec's network.ntp)", clockStepBound, clockAgree)
	// A source that finds the clock near confirms it, against the
	// others: follow that one, gently.
	for _, s := range got {
		if s.off.Abs() < clockStepBound {
			if err := slewBy(s.off); err != nil {
				return err.Error()
			}
			break
		}
	}
	return k.warn("unconfirmed", msg)
}

// resolved is called once the clock is being slewed by s.off with no
// trouble left; when that ends a trouble logged before, it says so.
func (k *clockKeeper) resolved(s clockSample) string {
	if k.warned == "" {
		return ""
	}
	k.warned = ""
	return fmt.Sprintf("%s: off by %s; slewing", s.name, s.off.Round(time.Millisecond))
}

func slewBy(off time.Duration) error {
	if off.Abs() < clockSlewMin {
		return nil
	}
	if err := slewClock(off); err != nil {
		return fmt.Errorf("slew by %s: %w", off, err)
	}
	return nil
}

// warn returns msg if trouble of this kind was not the last logged.
func (k *clockKeeper) warn(kind, msg string) string {
	if k.warned == kind {
		return ""
	}
	k.warned = kind
	return msg
}
