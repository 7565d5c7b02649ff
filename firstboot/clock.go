package firstboot

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"etcdimg/layout"
)

// A clockSource tells how far this machine's clock is off.
type clockSource struct {
	Name   string
	Offset func() (time.Duration, error)
}

// AWS's Time Sync Service, on every instance.
const awsTimeSync = "169.254.169.123"

// clockSources are the platform's own time source first (AWS's Time Sync
// Service, GCP's metadata server, Azure's host clock through Hyper-V's
// PTP device), then the NTP servers the spec names.
func clockSources(platform string, ntp []netip.Addr) []clockSource {
	var out []clockSource
	switch platform {
	case layout.PlatformAWS:
		out = append(out, ntpSource(awsTimeSync+":123", "AWS Time Sync Service"))
	case layout.PlatformGCP:
		out = append(out, ntpSource(layout.MetadataAddr+":123", "GCP metadata server"))
	case layout.PlatformAzure:
		out = append(out, clockSource{Name: "Azure host clock (Hyper-V PTP)", Offset: hypervPTPOffset})
	}
	for _, a := range ntp {
		out = append(out, ntpSource(a.String()+":123", "NTP"))
	}
	return out
}

func ntpSource(addr, what string) clockSource {
	return clockSource{Name: what + " " + addr, Offset: func() (time.Duration, error) { return sntpOffset(addr, 2*time.Second) }}
}

// ntpEpoch is 1900-01-01, where NTP time stamps count from.
var ntpEpoch = time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC)

func toNTP(t time.Time) uint64 {
	d := t.Sub(ntpEpoch)
	sec := uint64(d / time.Second)
	frac := uint64(d%time.Second) << 32 / uint64(time.Second)
	return sec<<32 | frac
}

func fromNTP(v uint64) time.Time {
	sec, frac := v>>32, v&0xffffffff
	return ntpEpoch.Add(time.Duration(sec)*time.Second + time.Duration(frac*uint64(time.Second)>>32))
}

// sntpOffset asks an NTP server once (RFC 4330, client mode) and returns
// the clock offset it measures: ((t2-t1) + (t3-t4)) / 2.
func sntpOffset(addr string, timeout time.Duration) (time.Duration, error) {
	conn, err := net.DialTimeout("udp", addr, timeout)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	req := make([]byte, 48)
	req[0] = 0<<6 | 4<<3 | 3 // no leap warning, version 4, client
	t1 := clockNow()
	binary.BigEndian.PutUint64(req[40:], toNTP(t1))
	if _, err := conn.Write(req); err != nil {
		return 0, err
	}
	resp := make([]byte, 48)
	n, err := conn.Read(resp)
	t4 := clockNow()
	if err != nil {
		return 0, err
	}
	switch {
	case n < 48:
		return 0, fmt.Errorf("short NTP answer (%d bytes)", n)
	case resp[0]&7 != 4:
		return 0, fmt.Errorf("not a server answer (mode %d)", resp[0]&7)
	case resp[1] == 0 || resp[1] > 15:
		return 0, fmt.Errorf("unsynchronised server (stratum %d)", resp[1])
	case resp[0]>>6 == 3:
		return 0, errors.New("the server's clock is not synchronised (leap indicator 3)")
	case binary.BigEndian.Uint64(resp[24:]) != binary.BigEndian.Uint64(req[40:]):
		return 0, errors.New("the answer is not to this request")
	}
	t2 := fromNTP(binary.BigEndian.Uint64(resp[32:]))
	t3 := fromNTP(binary.BigEndian.Uint64(resp[40:]))
	return (t2.Sub(t1.Round(0)) + t3.Sub(t4.Round(0))) / 2, nil
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
		before := time.Now()
		if err := unix.ClockGettime(id, &ts); err != nil {
			return 0, fmt.Errorf("%s: %w", dev, err)
		}
		after := time.Now()
		mid := before.Round(0).Add(after.Sub(before) / 2)
		return time.Unix(ts.Unix()).Sub(mid), nil
	}
	return 0, errors.New("no Hyper-V PTP clock")
}

// clockStep is the offset above which the clock is stepped.
const clockStep = 100 * time.Millisecond

// syncClock measures the offset from the first source that answers and
// steps the clock by it. No answer is not fatal: the boot goes on with
// the clock it has, and says so.
func syncClock(sources []clockSource, floor time.Time) (string, error) {
	if len(sources) == 0 {
		return "no time source on this platform or in the spec (network.ntp): keeping the hardware clock", nil
	}
	var tried []string
	for _, s := range sources {
		var off time.Duration
		var err error
		for range 3 {
			if off, err = s.Offset(); err == nil {
				break
			}
		}
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", s.Name, err))
			continue
		}
		if off.Abs() < clockStep {
			return fmt.Sprintf("%s: off by %s, left as it is", s.Name, off.Round(time.Millisecond)), nil
		}
		if err := stepClock(off); err != nil {
			return "", fmt.Errorf("step the clock by %s: %w", off, err)
		}
		return fmt.Sprintf("%s: stepped by %s to %s", s.Name, off.Round(time.Millisecond), clockNow().UTC().Format(time.RFC3339)), nil
	}
	return "no time source answered (" + strings.Join(tried, "; ") + "): keeping the hardware clock", nil
}

// The system clock, behind function values so that tests never set the
// host's clock.
var (
	clockNow  = time.Now
	stepClock = stepSystemClock
	slewClock = slewSystemClock
)

func stepSystemClock(off time.Duration) error {
	ts := unix.NsecToTimespec(time.Now().Add(off).UnixNano())
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

// slewSystemClock makes the kernel correct the clock by off gradually
// (adjtime(3)'s ADJ_OFFSET_SINGLESHOT: at most 0.5 ms a second, never
// backwards), replacing any correction still under way.
func slewSystemClock(off time.Duration) error {
	tx := unix.Timex{Modes: unix.ADJ_OFFSET_SINGLESHOT, Offset: off.Microseconds()}
	_, err := unix.Adjtimex(&tx)
	return err
}

// keepClock measures again every interval for the life of the member and
// steps the clock when it has drifted by a second or more.
func keepClock(ctx context.Context, sources []clockSource, floor time.Time, interval time.Duration) {
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

type clockKeeper struct {
	sources []clockSource
	floor   time.Time
}

// check measures once and returns what to log, if anything.
func (k *clockKeeper) check() string {
	for _, s := range k.sources {
		off, err := s.Offset()
		if err != nil {
			continue
		}
		if off.Abs() >= time.Second {
			if err := stepClock(off); err != nil {
				return fmt.Sprintf("step by %s: %v", off, err)
			}
			return fmt.Sprintf("%s: drifted by %s; stepped", s.Name, off.Round(time.Millisecond))
		}
		break
	}
	return ""
}
