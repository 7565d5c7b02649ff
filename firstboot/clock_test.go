package firstboot

import (
	"net"
	"strings"
	"testing"
	"time"

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
	msg, err := syncClock([]clockSource{{Name: "silent", Offset: func() (time.Duration, error) {
		return sntpOffset(silent.LocalAddr().String(), 100*time.Millisecond)
	}}}, time.Time{})
	if err != nil || !strings.Contains(msg, "no time source answered (silent: ") {
		t.Errorf("%q, %v", msg, err)
	}
}

func TestNTPTimestamps(t *testing.T) {
	now := time.Date(2026, 11, 27, 23, 0, 0, 123456789, time.UTC)
	if got := fromNTP(toNTP(now)); got.Sub(now).Abs() > time.Microsecond {
		t.Errorf("round trip %s, want %s", got, now)
	}
}
