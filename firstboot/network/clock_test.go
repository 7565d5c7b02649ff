package network

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"math"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"etcdimg/ignition/ign"
	"etcdimg/internal/cloudsim"
)

// TestSNTPMeasuresTheOffset asks a real UDP NTP server (the test's,
// running two hours ahead) and a silent one.
func TestSNTPMeasuresTheOffset(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go cloudsim.ServeNTP(pc, 2*time.Hour)
	off, err := sntpOffset(pc.LocalAddr().String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if d := off - 2*time.Hour; d.Abs() > 200*time.Millisecond {
		t.Errorf("offset %s, want 2h", off)
	}
	silent, _ := net.ListenPacket("udp", "127.0.0.1:0")
	defer silent.Close()
	if _, err := sntpOffset(silent.LocalAddr().String(), 300*time.Millisecond); err == nil {
		t.Error("a silent server gave an offset")
	}
	msg, err := SyncClock([]ClockSource{{Name: "silent", Offset: func(time.Duration) (time.Duration, error) {
		return sntpOffset(silent.LocalAddr().String(), 100*time.Millisecond)
	}}}, time.Time{})
	if err != nil || !strings.Contains(msg, "no time source answered (silent: ") {
		t.Errorf("%q, %v", msg, err)
	}
}

// ntpStamp writes t as an NTP time stamp: seconds since 1900 modulo 2^32
// (the era is not on the wire) and a binary fraction.
func ntpStamp(t time.Time) uint64 {
	sec := uint32(t.Unix() + 2208988800) // 1900 to 1970, wrapping as the wire does
	frac := uint64(t.Nanosecond()) << 32 / uint64(time.Second)
	return uint64(sec)<<32 | frac
}

// serveNTP is a real NTP server on loopback whose clock reads
// clock(): it answers each client request with a crafted stratum-2
// server packet. The address is its own, so two of them are two sources.
func serveNTP(t *testing.T, clock func() time.Time) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 48 || buf[0]&7 != 3 {
				continue
			}
			rx := clock()
			resp := make([]byte, 48)
			resp[0] = 0<<6 | 4<<3 | 4 // no leap warning, version 4, server
			resp[1] = 2               // stratum 2
			resp[2], resp[3] = 6, 0xec
			copy(resp[12:16], []byte{127, 0, 0, 1})
			binary.BigEndian.PutUint64(resp[16:], ntpStamp(rx.Add(-time.Minute))) // reference: updated a minute ago
			copy(resp[24:32], buf[40:48])                                         // originate: the client's transmit
			binary.BigEndian.PutUint64(resp[32:], ntpStamp(rx))
			binary.BigEndian.PutUint64(resp[40:], ntpStamp(clock()))
			pc.WriteTo(resp, from)
		}
	}()
	return pc.LocalAddr().String()
}

// fakeClock stands in for the system clock: it reads the true time (the
// host's, shifted to the scenario's date) plus an error, and a step
// changes the error. A slew is only recorded: it takes minutes.
type fakeClock struct {
	err          time.Duration // what the clock reads minus the true time
	steps, slews []time.Duration
}

func useFakeClock(t *testing.T, shift, err time.Duration) *fakeClock {
	f := &fakeClock{err: err}
	now, step, slew := clockNow, stepClock, slewClock
	t.Cleanup(func() { clockNow, stepClock, slewClock = now, step, slew })
	clockNow = func() time.Time { return time.Now().Add(shift + f.err) }
	stepClock = func(off time.Duration) error { f.err += off; f.steps = append(f.steps, off); return nil }
	slewClock = func(off time.Duration) error { f.slews = append(f.slews, off); return nil }
	return f
}

// A clock scenario: the true time plays at now (zero: the host's real
// time), this machine's clock reads local (zero: the true time), each
// server reads the true time plus its skew (or never answers: silent),
// and the image's floor is floor (or, when zero, a day before the true
// time).
type clockScenario struct {
	name    string
	now     time.Time
	local   time.Time
	floor   time.Time
	servers []time.Duration
}

// start starts the scenario's servers and the fake clock; it returns
// the sources, the floor and the fake clock.
func (sc clockScenario) start(t *testing.T) ([]ClockSource, time.Time, *fakeClock) {
	real := time.Now()
	shift := time.Duration(0)
	if !sc.now.IsZero() {
		shift = sc.now.Sub(real)
	}
	truth := real.Add(shift)
	localErr := time.Duration(0)
	if !sc.local.IsZero() {
		localErr = sc.local.Sub(truth)
	}
	floor := sc.floor
	if floor.IsZero() {
		floor = truth.Add(-24 * time.Hour)
	}
	var sources []ClockSource
	for _, skew := range sc.servers {
		if skew == silent {
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pc.Close() })
			addr := pc.LocalAddr().String()
			sources = append(sources, ntpSource("NTP "+addr, addr))
			continue
		}
		addr := serveNTP(t, func() time.Time { return time.Now().Add(shift + skew) })
		sources = append(sources, ntpSource("NTP "+addr, addr))
	}
	return sources, floor, useFakeClock(t, shift, localErr)
}

// silent, as a server's skew, is a server that never answers.
const silent = time.Duration(math.MinInt64)

var (
	in2036   = time.Date(2036, 6, 1, 12, 0, 0, 0, time.UTC) // NTP era 1 began on 2036-02-07
	unixZero = time.Unix(0, 0)
	day      = 24 * time.Hour
)

// TestClockAtBoot: at boot one sane sample may step the clock by any
// amount, in the NTP era nearest the image's floor, but never to before
// that floor.
func TestClockAtBoot(t *testing.T) {
	for _, tc := range []struct {
		clockScenario
		want   time.Duration // the clock's error afterwards
		step   bool          // whether it is stepped
		stderr string        // in the message
	}{
		{clockScenario: clockScenario{name: "in sync", servers: []time.Duration{0}}},
		{clockScenario: clockScenario{name: "the clock at 1970, the server right", local: unixZero, servers: []time.Duration{0}}, step: true},
		{clockScenario: clockScenario{name: "31 days behind, one server", local: time.Now().Add(-31 * day), floor: time.Now().Add(-40 * day), servers: []time.Duration{0}}, step: true},
		// A time stamp of era 1 (after 2036-02-07) reads, era-blind, as 1900.
		{clockScenario: clockScenario{name: "era 1: the clock at 1970, the server in 2036", now: in2036, local: unixZero, floor: in2036.Add(-30 * day), servers: []time.Duration{0}}, step: true},
		{clockScenario: clockScenario{name: "era 1: the clock at the build time, the server in 2036", now: in2036, local: in2036.Add(-10 * day), floor: in2036.Add(-10 * day), servers: []time.Duration{0}}, step: true},
		{clockScenario: clockScenario{name: "era 1: in sync in 2036", now: in2036, servers: []time.Duration{0}}},
		// A server 136 years (one era) behind sends what a right one
		// sends: the era nearest the floor reads it right.
		{clockScenario: clockScenario{name: "a server 136 years behind", servers: []time.Duration{-ntpEra}}},
		{clockScenario: clockScenario{name: "a server 136 years behind, in 2036", now: in2036, servers: []time.Duration{-ntpEra}}},
		// A server that reads before the image was built is wrong.
		{clockScenario: clockScenario{name: "the only server before the floor", servers: []time.Duration{-31 * day}}, stderr: "before"},
		{clockScenario: clockScenario{name: "a server before the floor, then a right one", local: unixZero, servers: []time.Duration{-31 * day, 0}}, step: true},
		// With no sane sample the clock is at least raised to the floor,
		// where the image's certificates are valid.
		{clockScenario: clockScenario{name: "the clock at 1970, the only server before the floor", local: unixZero, servers: []time.Duration{-31 * day}}, want: -day, step: true},
		{clockScenario: clockScenario{name: "the clock at 1970, no server", local: unixZero}, want: -day, step: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sources, floor, clk := tc.start(t)
			msg, err := SyncClock(sources, floor)
			if err != nil {
				t.Fatal(err)
			}
			t.Log(msg)
			if d := clk.err - tc.want; d.Abs() > 500*time.Millisecond {
				t.Errorf("the clock is off by %s after %q (steps %v); want %s", clk.err, msg, clk.steps, tc.want)
			}
			if stepped := len(clk.steps) > 0; stepped != tc.step {
				t.Errorf("steps %v, want stepped=%v", clk.steps, tc.step)
			}
			if !strings.Contains(msg, tc.stderr) {
				t.Errorf("%q, want it to say %q", msg, tc.stderr)
			}
		})
	}
}

// TestClockAfterBoot: after boot a step of more than a second needs two
// sources that agree; one source alone is slewed when it is near, and
// logged once, not followed, when it is far.
func TestClockAfterBoot(t *testing.T) {
	for _, tc := range []struct {
		clockScenario
		want  time.Duration // the clock's error after two checks
		steps int
		slew  time.Duration // the first slew asked for, if any
		logs  []string      // in the two checks' logs ("" for none)
	}{
		{clockScenario: clockScenario{name: "in sync", servers: []time.Duration{0}}, logs: []string{"", ""}},
		{clockScenario: clockScenario{name: "300ms slow: slewed", local: time.Now().Add(-300 * time.Millisecond), servers: []time.Duration{0}}, want: -300 * time.Millisecond, slew: 300 * time.Millisecond, logs: []string{"", ""}},
		{clockScenario: clockScenario{name: "one server 31 days ahead: logged once, not stepped", servers: []time.Duration{31 * day}}, logs: []string{"not stepped", ""}},
		{clockScenario: clockScenario{name: "one server 31 days behind: logged once, not stepped", servers: []time.Duration{-31 * day}, floor: time.Now().Add(-40 * day)}, logs: []string{"not stepped", ""}},
		{clockScenario: clockScenario{name: "one server 2s ahead: not stepped", servers: []time.Duration{2 * time.Second}}, logs: []string{"not stepped", ""}},
		{clockScenario: clockScenario{name: "two agreeing servers 31 days ahead: stepped", local: time.Now().Add(-31 * day), floor: time.Now().Add(-40 * day), servers: []time.Duration{0, 50 * time.Millisecond}}, want: 25 * time.Millisecond, steps: 1, logs: []string{"stepped", ""}},
		{clockScenario: clockScenario{name: "two disagreeing servers: not stepped", servers: []time.Duration{31 * day, 31*day + 10*time.Second}}, logs: []string{"not stepped", ""}},
		{clockScenario: clockScenario{name: "a server 31 days ahead, another right: not stepped", servers: []time.Duration{31 * day, 0}}, logs: []string{"not stepped", ""}},
		{clockScenario: clockScenario{name: "era 1: in sync in 2036", now: in2036, servers: []time.Duration{0}}, logs: []string{"", ""}},
		{clockScenario: clockScenario{name: "era 1: two servers in 2036, the clock a year behind", now: in2036, local: in2036.Add(-365 * day), floor: in2036.Add(-400 * day), servers: []time.Duration{0, 0}}, steps: 1, logs: []string{"stepped", ""}},
		{clockScenario: clockScenario{name: "the only server before the floor", servers: []time.Duration{-31 * day}}, logs: []string{"before", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sources, floor, clk := tc.start(t)
			k := &clockKeeper{sources: sources, floor: floor}
			var logs []string
			for range 2 {
				logs = append(logs, k.check())
			}
			t.Logf("%q", logs)
			if d := clk.err - tc.want; d.Abs() > 500*time.Millisecond {
				t.Errorf("the clock is off by %s after %q (steps %v); want %s", clk.err, logs, clk.steps, tc.want)
			}
			if len(clk.steps) != tc.steps {
				t.Errorf("steps %v, want %d", clk.steps, tc.steps)
			}
			switch {
			case tc.slew == 0 && len(clk.slews) > 0 && clk.slews[0].Abs() > 100*time.Millisecond:
				t.Errorf("slews %v, want none of note", clk.slews)
			case tc.slew != 0 && (len(clk.slews) == 0 || (clk.slews[0]-tc.slew).Abs() > 100*time.Millisecond):
				t.Errorf("slews %v, want %s first", clk.slews, tc.slew)
			}
			for i, want := range tc.logs {
				if want == "" && logs[i] != "" || !strings.Contains(logs[i], want) {
					t.Errorf("check %d logged %q, want %q", i+1, logs[i], want)
				}
			}
		})
	}
}

// TestClockFloor: the floor is the newest NotBefore of the member's CA
// and certificate, and never earlier than codeFloor.
func TestClockFloor(t *testing.T) {
	old := codeFloor.Add(-365 * day)
	ca, member := codeFloor.Add(10*day), codeFloor.Add(20*day)
	for _, tc := range []struct {
		name  string
		files map[string][]time.Time // path: one certificate per NotBefore
		want  time.Time
	}{
		{"no certificates", nil, codeFloor},
		{"the member certificate is newest", map[string][]time.Time{ign.CACertPath: {ca}, ign.CertPath: {member}}, member},
		{"the newest of a CA bundle", map[string][]time.Time{ign.CACertPath: {ca, member}, ign.CertPath: {old}}, member},
		{"older than the code", map[string][]time.Time{ign.CACertPath: {old}, ign.CertPath: {old}}, codeFloor},
		{"not a certificate", map[string][]time.Time{ign.CertPath: nil}, codeFloor},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for path, times := range tc.files {
				var data []byte
				for _, nb := range times {
					data = append(data, testCertPEM(t, nb)...)
				}
				if times == nil {
					data = []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
				}
				p := filepath.Join(root, path)
				if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if got := ClockFloor(root); !got.Equal(tc.want) {
				t.Errorf("floor %s, want %s", got, tc.want)
			}
		})
	}
}

func testCertPEM(t *testing.T, notBefore time.Time) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"}, NotBefore: notBefore, NotAfter: notBefore.Add(365 * day)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestNearestEra: a time is read in the NTP era nearest the floor, so
// the wire's missing era never costs 136 years while the floor is within
// 68 years of the truth.
func TestNearestEra(t *testing.T) {
	floor := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		t, floor  time.Time
		wantShift time.Duration
	}{
		{"near the floor", floor.Add(day), floor, 0},
		{"read as 1900 (era 0), truly 2036", time.Date(1900, 4, 1, 0, 0, 0, 0, time.UTC), floor, ntpEra},
		{"read as 2162, truly 2026", floor.Add(ntpEra + day), floor, -ntpEra},
		{"67 years ahead stays", floor.Add(67 * 365 * day), floor, 0},
		{"69 years ahead is the era before", floor.Add(69 * 365 * day), floor, -ntpEra},
		// Past 2106 the library's fixed window reads 2107 as 1971.
		{"a floor in 2100, 2107 read as 1971", time.Date(1971, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC), ntpEra},
		{"no floor", time.Date(1900, 4, 1, 0, 0, 0, 0, time.UTC), time.Time{}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, want := nearestEra(tc.t, tc.floor), tc.t.Add(tc.wantShift); !got.Equal(want) {
				t.Errorf("nearestEra(%s, %s) = %s, want %s", tc.t, tc.floor, got, want)
			}
		})
	}
}

// TestClockSetOffsetTimex: the step's adjtimex request carries the
// offset with non-negative microseconds, as the kernel demands.
func TestClockSetOffsetTimex(t *testing.T) {
	for _, tc := range []struct {
		off       time.Duration
		sec, usec int64
	}{
		{1500 * time.Millisecond, 1, 500000},
		{-1500 * time.Millisecond, -2, 500000},
		{-time.Second, -1, 0},
		{31 * day, 31 * 86400, 0},
		{-31*day - time.Microsecond, -31*86400 - 1, 999999},
		{time.Duration(56*365) * day, 56 * 365 * 86400, 0},
	} {
		tx := setOffsetTimex(tc.off)
		if tx.Modes != unix.ADJ_SETOFFSET || tx.Time.Sec != tc.sec || tx.Time.Usec != tc.usec {
			t.Errorf("%s: modes %#x, %d s %d µs; want ADJ_SETOFFSET, %d s %d µs", tc.off, tx.Modes, tx.Time.Sec, tx.Time.Usec, tc.sec, tc.usec)
		}
	}
}

// TestClockOneLyingServer: one server that lies, first in the list, is
// outvoted by the others that agree, at boot and in the upkeep, and is
// named in the log; servers that all disagree step the clock to none of
// them (only the floor rule).
func TestClockOneLyingServer(t *testing.T) {
	liar := 31 * day
	for _, tc := range []struct {
		clockScenario
		skipBoot bool          // the clock was set before (by a liar, say): upkeep only
		want     time.Duration // the clock's error after boot and four checks
		log      int           // the server named, as lying, in the first two logs (-1: none)
	}{
		{clockScenario: clockScenario{name: "a liar first, two right, the clock right", servers: []time.Duration{liar, 0, 0}}},
		{clockScenario: clockScenario{name: "a liar first, two right, the clock at 1970", local: unixZero, servers: []time.Duration{liar, 0, 0}}},
		{clockScenario: clockScenario{name: "a liar first, two right, the clock a year behind", local: time.Now().Add(-365 * day), floor: time.Now().Add(-400 * day), servers: []time.Duration{liar, 0, 0}}},
		{clockScenario: clockScenario{name: "a liar last, two right, the clock at 1970", local: unixZero, servers: []time.Duration{0, 0, liar}}, log: 2},
		{clockScenario: clockScenario{name: "the upkeep: the clock follows a liar, two right", local: time.Now().Add(liar), servers: []time.Duration{liar, 0, 0}}, skipBoot: true},
		{clockScenario: clockScenario{name: "the upkeep: the clock follows a liar, two right, in 2036", now: in2036, local: in2036.Add(liar), floor: in2036.Add(-30 * day), servers: []time.Duration{liar, 0, 0}}, skipBoot: true},
		// No two agree: no server is followed, the floor still holds.
		{clockScenario: clockScenario{name: "a liar and a right one, the clock at 1970", local: unixZero, servers: []time.Duration{liar, 0}}, want: -day, log: -1},
		{clockScenario: clockScenario{name: "two liars and two right ones, the clock at 1970", local: unixZero, servers: []time.Duration{liar, liar, 0, 0}}, want: -day, log: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sources, floor, clk := tc.start(t)
			err0 := clk.err
			var logs []string
			if !tc.skipBoot {
				msg, err := SyncClock(sources, floor)
				if err != nil {
					t.Fatal(err)
				}
				logs = append(logs, msg)
			}
			k := &clockKeeper{sources: sources, floor: floor}
			for range 4 {
				logs = append(logs, k.check())
			}
			t.Logf("%q", logs)
			if d := clk.err - tc.want; d.Abs() > 500*time.Millisecond {
				t.Errorf("clock error after boot + 4 checks: %s, steps %v; want %s", clk.err, clk.steps, tc.want)
			}
			// The clock's error right after each step: never the liar's.
			e := err0
			for _, s := range clk.steps {
				if e += s; (e - liar).Abs() < time.Hour {
					t.Errorf("steps %v: one follows the liar", clk.steps)
				}
			}
			// At boot a liar that answers after two agree is not waited
			// for: the first check names it.
			if tc.log >= 0 && !strings.Contains(logs[0]+logs[1], sources[tc.log].Name) {
				t.Errorf("the first logs %q do not name the liar %s", logs[:2], sources[tc.log].Name)
			}
		})
	}
}

// TestClockBootRound: at boot more than one source is asked at once, and
// the boot waits for them no longer than ntpTimeout, however many are
// silent, and not at all once most agree; when only one answers it is
// followed, as a lone source is.
func TestClockBootRound(t *testing.T) {
	for _, tc := range []struct {
		clockScenario
		want    time.Duration // the clock's error after boot
		msg     string        // in the boot's message
		maxTook time.Duration // how long the boot may wait (zero: ntpTimeout)
	}{
		{clockScenario: clockScenario{name: "two right, one silent: not waited for", local: unixZero, servers: []time.Duration{silent, 0, 0}}, msg: "stepped", maxTook: 500 * time.Millisecond},
		{clockScenario: clockScenario{name: "one right, two silent, the clock at 1970", local: unixZero, servers: []time.Duration{silent, 0, silent}}, msg: "the only answer"},
		{clockScenario: clockScenario{name: "a liar, one right, one silent, the clock at 1970", local: unixZero, servers: []time.Duration{31 * day, silent, 0}}, want: -day, msg: "they disagree"},
		{clockScenario: clockScenario{name: "all silent, the clock at 1970", local: unixZero, servers: []time.Duration{silent, silent, silent}}, want: -day, msg: "no time source answered"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sources, floor, clk := tc.start(t)
			start := time.Now()
			msg, err := SyncClock(sources, floor)
			took := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %s", took, msg)
			maxTook := tc.maxTook
			if maxTook == 0 {
				maxTook = ntpTimeout + 500*time.Millisecond
			}
			if took > maxTook {
				t.Errorf("the boot waited %s for its time sources, want at most %s", took, maxTook)
			}
			// The floor was a day before the true time when the boot
			// began, took ago.
			if d := clk.err - tc.want; d.Abs() > 500*time.Millisecond+took {
				t.Errorf("the clock is off by %s after %q (steps %v); want %s", clk.err, msg, clk.steps, tc.want)
			}
			if !strings.Contains(msg, tc.msg) {
				t.Errorf("%q, want it to say %q", msg, tc.msg)
			}
		})
	}
}

// TestClockStepNeedsMajority: a step of clockStepBound or more needs a
// strict majority of the sources that answered, not merely the largest
// group. Two right servers 300 ms apart (more than clockAgree) form two
// groups of one, so two liars that agree were the largest group and
// stepped a right clock by an hour, at boot and after. An offset under
// the bound keeps the old rule: the largest group of two or more, with
// no rival as large, is followed.
func TestClockStepNeedsMajority(t *testing.T) {
	liar := time.Hour
	liars := []time.Duration{liar, liar + 10*time.Millisecond}
	right := []time.Duration{0, 300 * time.Millisecond}
	for _, tc := range []struct {
		clockScenario
		boot  bool          // SyncClock once; otherwise the upkeep checks twice
		want  time.Duration // the clock's error afterwards
		steps int
		slew  time.Duration // the first slew asked for, if any
		log   string        // in the first message
	}{
		{clockScenario: clockScenario{name: "upkeep: two right 300ms apart, then two agreeing liars", servers: slices.Concat(right, liars)}, log: "not stepped"},
		{clockScenario: clockScenario{name: "upkeep: two agreeing liars, then two right 300ms apart", servers: slices.Concat(liars, right)}, log: "not stepped"},
		{clockScenario: clockScenario{name: "boot: two agreeing liars, two right 300ms apart, the clock right", servers: slices.Concat(liars, right)}, boot: true, log: "they disagree"},
		{clockScenario: clockScenario{name: "boot: two agreeing liars, two right 300ms apart, the clock at 1970", local: unixZero, servers: slices.Concat(liars, right)}, boot: true, want: -day, steps: 1, log: "image's floor"},
		// A strict majority still steps, with a liar among the sources.
		{clockScenario: clockScenario{name: "upkeep: three of four agree, the clock an hour behind", local: time.Now().Add(-time.Hour), servers: []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 31 * day}}, want: 100 * time.Millisecond, steps: 1, log: "stepped"},
		{clockScenario: clockScenario{name: "boot: three of four agree, the clock at 1970", local: unixZero, servers: []time.Duration{31 * day, 0, 100 * time.Millisecond, 200 * time.Millisecond}}, boot: true, want: 100 * time.Millisecond, steps: 1, log: "stepped"},
		// Under the bound two of four are still followed (slewed).
		{clockScenario: clockScenario{name: "upkeep: two of four agree, 500ms slow", local: time.Now().Add(-500 * time.Millisecond), servers: []time.Duration{0, 10 * time.Millisecond, 2 * time.Hour, -2 * time.Hour}}, want: -500 * time.Millisecond, slew: 505 * time.Millisecond, log: "ignored"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sources, floor, clk := tc.start(t)
			err0 := clk.err
			var logs []string
			if tc.boot {
				msg, err := SyncClock(sources, floor)
				if err != nil {
					t.Fatal(err)
				}
				logs = append(logs, msg)
			} else {
				k := &clockKeeper{sources: sources, floor: floor}
				for range 2 {
					logs = append(logs, k.check())
				}
			}
			t.Logf("%q", logs)
			if d := clk.err - tc.want; d.Abs() > 500*time.Millisecond {
				t.Errorf("the clock is off by %s after %q (steps %v); want %s", clk.err, logs, clk.steps, tc.want)
			}
			if len(clk.steps) != tc.steps {
				t.Errorf("steps %v, want %d", clk.steps, tc.steps)
			}
			e := err0
			for _, s := range clk.steps {
				if e += s; (e - liar).Abs() < time.Minute {
					t.Errorf("steps %v: one follows the liars", clk.steps)
				}
			}
			switch {
			case tc.slew == 0 && len(clk.slews) > 0 && clk.slews[0].Abs() > 100*time.Millisecond:
				t.Errorf("slews %v, want none of note", clk.slews)
			case tc.slew != 0 && (len(clk.slews) == 0 || (clk.slews[0]-tc.slew).Abs() > 100*time.Millisecond):
				t.Errorf("slews %v, want %s first", clk.slews, tc.slew)
			}
			if !strings.Contains(logs[0], tc.log) {
				t.Errorf("%q, want it to say %q", logs[0], tc.log)
			}
		})
	}
}
