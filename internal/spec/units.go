package spec

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Duration is a time.Duration written as Go writes it ("100ms", "87600h"),
// with "d" accepted for whole days ("3650d").
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// maxDays is the most whole days a time.Duration holds.
const maxDays = uint64(1<<63-1) / uint64(24*time.Hour)

// ParseDuration parses "100ms", "1h30m" or "365d".
func ParseDuration(s string) (Duration, error) {
	s = strings.TrimSpace(s)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 32)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration; write it like 100ms, 30m, 87600h or 3650d", s)
		}
		if n > maxDays {
			return 0, fmt.Errorf("%q is too long: at most %dd (292 years) fit in a duration", s, maxDays)
		}
		return Duration(time.Duration(n) * 24 * time.Hour), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration; write it like 100ms, 30m, 87600h or 3650d", s)
	}
	return Duration(d), nil
}

// String writes the duration in the largest whole unit, so that the spec
// etcdimg writes back reads like the one a person wrote.
func (d Duration) String() string {
	t := time.Duration(d)
	switch {
	case t == 0:
		return "0s"
	case t < 0 && t != -1<<63:
		// A negative value is written as its magnitude is, signed: -5h,
		// not -18000000ms.
		return "-" + Duration(-t).String()
	case t < 10*time.Second && t%time.Millisecond == 0:
		// etcd's timing settings are in milliseconds; keep them so.
		return fmt.Sprintf("%dms", t/time.Millisecond)
	case t%time.Hour == 0:
		return fmt.Sprintf("%dh", t/time.Hour)
	case t%time.Minute == 0:
		return fmt.Sprintf("%dm", t/time.Minute)
	case t%time.Second == 0:
		return fmt.Sprintf("%ds", t/time.Second)
	case t%time.Millisecond == 0:
		return fmt.Sprintf("%dms", t/time.Millisecond)
	}
	return t.String()
}

func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a duration such as 100ms or 87600h", n.Line)
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		return fieldValueError{line: n.Line, value: n.Value, msg: err.Error()}
	}
	*d = v
	return nil
}

// Size is a byte count written with an optional binary or decimal unit:
// "2GiB", "512MiB", "8GB", "2147483648".
type Size uint64

// Binary units.
const (
	KiB Size = 1 << 10
	MiB Size = 1 << 20
	GiB Size = 1 << 30
)

var sizeUnits = []struct {
	suffix string
	mult   uint64
}{
	// Longest suffixes first, so "GiB" is not read as "B".
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"B", 1},
}

// ParseSize parses "2GiB", "500MB" or a plain byte count.
func ParseSize(s string) (Size, error) {
	s = strings.TrimSpace(s)
	num, mult := s, uint64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || (mult > 1 && n > ^uint64(0)/mult) {
		return 0, fmt.Errorf("%q is not a size; write it like 2GiB, 512MiB or 8GB", s)
	}
	return Size(n * mult), nil
}

// String writes the size in the largest binary unit that divides it.
func (s Size) String() string {
	for _, u := range []struct {
		suffix string
		mult   Size
	}{{"TiB", 1 << 40}, {"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB}} {
		if s != 0 && s%u.mult == 0 {
			return fmt.Sprintf("%d%s", s/u.mult, u.suffix)
		}
	}
	return strconv.FormatUint(uint64(s), 10)
}

func (s Size) MarshalYAML() (any, error) { return s.String(), nil }

func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a size such as 2GiB", n.Line)
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return fieldValueError{line: n.Line, value: n.Value, msg: err.Error()}
	}
	*s = v
	return nil
}

// fieldValueError carries the YAML line of a value that did not parse.
type fieldValueError struct {
	line  int
	value string
	msg   string
}

func (e fieldValueError) Error() string { return fmt.Sprintf("line %d: %s", e.line, e.msg) }

// Set and Type make a Size a command-line flag value.
func (s *Size) Set(v string) error {
	n, err := ParseSize(v)
	if err != nil {
		return err
	}
	*s = n
	return nil
}

func (s *Size) Type() string { return "size" }
