package firstboot

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"etcdimg/firstboot/internal/console"
)

// Linux input event codes (linux/input-event-codes.h).
const (
	evKey    = 0x01
	keyPower = 116
)

// watchPowerButton calls fn when the ACPI power button is pressed, which
// is what QEMU's system_powerdown and a cloud's "stop" send. The button
// driver reports through an evdev input device named "Power Button".
func watchPowerButton(fn func()) error {
	devs, _ := filepath.Glob("/sys/class/input/event*")
	var found []string
	for _, d := range devs {
		name, err := os.ReadFile(filepath.Join(d, "device", "name"))
		if err != nil || !strings.Contains(string(name), "Power Button") {
			continue
		}
		f, err := os.Open("/dev/input/" + filepath.Base(d))
		if err != nil {
			return err
		}
		found = append(found, filepath.Base(d))
		console.Go("power button", func() { readPowerEvents(f, fn) })
	}
	if len(found) == 0 {
		return fmt.Errorf("no input device named Power Button (modules button and evdev)")
	}
	logf("power button: watching %s", strings.Join(found, ", "))
	return nil
}

// readPowerEvents reads struct input_event records (24 bytes on 64-bit:
// a timeval, type, code, value) and fires on a power key press.
func readPowerEvents(f *os.File, fn func()) {
	defer f.Close()
	buf := make([]byte, 24*16)
	for {
		n, err := f.Read(buf)
		if err != nil {
			logf("power button: %v", err)
			return
		}
		for off := 0; off+24 <= n; off += 24 {
			ev := buf[off : off+24]
			typ := binary.LittleEndian.Uint16(ev[16:18])
			code := binary.LittleEndian.Uint16(ev[18:20])
			value := int32(binary.LittleEndian.Uint32(ev[20:24]))
			if typ == evKey && code == keyPower && value == 1 {
				fn()
			}
		}
	}
}
