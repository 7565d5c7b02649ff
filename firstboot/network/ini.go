package network

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
)

// WalkINI reads a systemd-style file (unit or .network): [Section]
// headers, Key=Value lines, comments starting with # or ;. It calls fn
// for every assignment with its line number; fn's error, or a line that
// is neither, stops the walk.
func WalkINI(data []byte, fn func(line int, section, key, value string) error) error {
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return fmt.Errorf("line %d: %q is not Key=Value", n, line)
		}
		if err := fn(n, section, strings.TrimSpace(k), strings.TrimSpace(v)); err != nil {
			return err
		}
	}
	return sc.Err()
}
