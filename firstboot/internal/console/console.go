// Package console prints the boot's lines on the serial console, the
// same way in both programs a boot runs: the small /init of the
// initramfs (package preinit) and the node binary's firstboot. Each
// line is stamped with the time since the machine started, and each
// boot step is one line with its duration, which tests, `make bench`
// and operators read.
package console

import (
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"golang.org/x/sys/unix"

	"etcdimg/internal/layout"
)

// Prefix starts every boot line; tests and operators grep for it.
const Prefix = layout.ConsolePrefix

// Stopped starts the line of a boot that cannot go on.
const Stopped = layout.ConsoleStopped

// Logf prints one line, stamped with the kernel's boot-time clock.
func Logf(format string, args ...any) {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	up := time.Duration(ts.Nano())
	fmt.Fprintf(os.Stdout, "[%8.3f] %s %s\n", up.Seconds(), Prefix, fmt.Sprintf(format, args...))
}

// Step runs one boot step and prints it as one line with its duration,
// or with its error.
func Step(name string, fn func() (string, error)) error {
	start := time.Now()
	detail, err := fn()
	took := time.Since(start).Round(time.Millisecond)
	if err != nil {
		Logf("%s: failed after %s: %v", name, took, err)
		return fmt.Errorf("%s: %w", name, err)
	}
	if detail != "" {
		Logf("%s: %s (%s)", name, detail, took)
	} else {
		Logf("%s (%s)", name, took)
	}
	return nil
}

// Go runs fn in a goroutine whose panic is printed on the console with
// its stack instead of ending PID 1 (and with it, the machine).
func Go(name string, fn func()) {
	go func() {
		defer func() {
			if r := recover(); r != nil {
				Logf("panic in %s: %v\n%s", name, r, debug.Stack())
			}
		}()
		fn()
	}()
}
