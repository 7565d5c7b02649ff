package firstboot

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"etcdimg/firstboot/network"
	"etcdimg/ignition/ign"
)

// Unit is a systemd service unit, reduced to the directives the runbook's
// etcd.service uses. firstboot supervises it; it is not systemd.
type Unit struct {
	Name            string
	Type            string // simple, exec, notify, oneshot
	ExecStart       []string
	EnvironmentFile []envFile
	Environment     []string
	Restart         string // no, on-failure, always
	RestartSec      time.Duration
	LimitNOFILE     uint64
}

type envFile struct {
	Path     string
	Optional bool // "-" prefix: a missing file is not an error
}

// supportedDirectives lists what ParseUnit accepts. [Unit] and [Install]
// directives about ordering and enablement are accepted and have no
// further effect: the appliance starts enabled units in config order,
// after the network and the data disk.
var supportedDirectives = map[string]bool{
	"Unit.Description": true, "Unit.Documentation": true, "Unit.After": true,
	"Unit.Wants": true, "Unit.Requires": true, "Unit.Before": true,
	"Service.Type": true, "Service.ExecStart": true, "Service.EnvironmentFile": true,
	"Service.Environment": true, "Service.Restart": true, "Service.RestartSec": true,
	"Service.LimitNOFILE": true,
	"Install.WantedBy":    true,
}

// ParseUnit reads a unit file. Any directive outside the supported subset
// is an error that names it.
func ParseUnit(name string, data []byte) (*Unit, error) {
	if !strings.HasSuffix(name, ".service") {
		return nil, fmt.Errorf("unit %s: only .service units are supported", name)
	}
	u := &Unit{Name: name, Type: "simple", Restart: "no", RestartSec: 100 * time.Millisecond}
	err := network.WalkINI(data, func(n int, section, k, v string) error {
		if !supportedDirectives[section+"."+k] {
			return fmt.Errorf("unit %s line %d: [%s] %s= is not supported by the appliance; it runs Type, ExecStart, EnvironmentFile, Environment, Restart, RestartSec and LimitNOFILE", name, n, section, k)
		}
		var err error
		switch k {
		case "Type":
			switch v {
			case "simple", "exec", "notify", "oneshot":
				u.Type = v
			default:
				err = fmt.Errorf("Type=%s is not supported; use simple, exec, notify or oneshot", v)
			}
		case "ExecStart":
			if u.ExecStart != nil {
				err = fmt.Errorf("a second ExecStart= is not supported")
			} else if v != "" && strings.ContainsAny(v[:1], "-@:+!") {
				err = fmt.Errorf("ExecStart= prefixes (%c) are not supported", v[0])
			} else if u.ExecStart, err = splitCommand(v); err == nil && !strings.HasPrefix(u.ExecStart[0], "/") {
				err = fmt.Errorf("ExecStart=%s must be an absolute path", u.ExecStart[0])
			}
		case "EnvironmentFile":
			f := envFile{Path: v}
			if p, ok := strings.CutPrefix(v, "-"); ok {
				f = envFile{Path: p, Optional: true}
			}
			u.EnvironmentFile = append(u.EnvironmentFile, f)
		case "Environment":
			var words []string
			if words, err = splitCommand(v); err == nil {
				for _, w := range words {
					if !strings.Contains(w, "=") {
						err = fmt.Errorf("Environment=%s: %q is not NAME=VALUE", v, w)
						break
					}
				}
				u.Environment = append(u.Environment, words...)
			}
		case "Restart":
			switch v {
			case "no", "on-failure", "always":
				u.Restart = v
			default:
				err = fmt.Errorf("Restart=%s is not supported; use no, on-failure or always", v)
			}
		case "RestartSec":
			u.RestartSec, err = parseSec(v)
		case "LimitNOFILE":
			if v == "infinity" {
				u.LimitNOFILE = math.MaxUint64
			} else {
				u.LimitNOFILE, err = strconv.ParseUint(v, 10, 64)
			}
		}
		if err != nil {
			return fmt.Errorf("unit %s line %d: %w", name, n, err)
		}
		return nil
	})
	if err != nil {
		if strings.HasPrefix(err.Error(), "line ") {
			err = fmt.Errorf("unit %s %w", name, err)
		}
		return nil, err
	}
	if u.ExecStart == nil {
		return nil, fmt.Errorf("unit %s: no ExecStart=", name)
	}
	return u, nil
}

// parseSec reads systemd's time span: "5" (seconds), "5s", "500ms", "1min".
func parseSec(v string) (time.Duration, error) {
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		return time.Duration(n * float64(time.Second)), nil
	}
	v = strings.Replace(strings.Replace(v, "min", "m", 1), "sec", "s", 1)
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a time span such as 5 or 5s", v)
	}
	return d, nil
}

// splitCommand splits a command line on spaces, honouring double and
// single quotes and backslash escapes, as systemd does for ExecStart=.
func splitCommand(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord, quote := false, byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote == 0 && (c == '"' || c == '\''):
			quote, inWord = c, true
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case quote == 0 && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unbalanced %c in %q", quote, s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	if len(words) == 0 {
		return nil, fmt.Errorf("empty command")
	}
	return words, nil
}

// enabledUnits parses every enabled unit of the config, in config order,
// refusing the config if any uses an unsupported directive.
func enabledUnits(cfg ign.Config) ([]*Unit, error) {
	var units []*Unit
	for _, u := range cfg.Systemd.Units {
		if u.Enabled == nil || !*u.Enabled {
			continue
		}
		if u.Mask != nil && *u.Mask {
			continue
		}
		if u.Contents == nil {
			return nil, fmt.Errorf("unit %s is enabled but has no contents; the appliance has no units of its own", u.Name)
		}
		p, err := ParseUnit(u.Name, []byte(*u.Contents))
		if err != nil {
			return nil, err
		}
		units = append(units, p)
	}
	if len(units) == 0 {
		return nil, fmt.Errorf("the config enables no unit; it should enable %s", ign.EtcdUnitName)
	}
	return units, nil
}
