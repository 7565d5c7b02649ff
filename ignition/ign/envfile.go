package ign

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strings"
)

var envKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ParseEnvFile reads a systemd EnvironmentFile: KEY=VALUE lines, comments
// starting with # or ;, values bare or in single or double quotes (with \"
// and \\ escapes inside double quotes). It returns "KEY=VALUE" entries in
// file order. An error names the line and its key, never the value: the
// file may hold secrets (S3 keys), and errors are printed.
func ParseEnvFile(data []byte) ([]string, error) {
	var env []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		key = strings.TrimSpace(key)
		switch bare, export := strings.CutPrefix(key, "export "); {
		case !ok:
			return nil, fmt.Errorf("line %d has no '=', so it is not KEY=VALUE", n)
		case export && envKey.MatchString(strings.TrimSpace(bare)):
			return nil, fmt.Errorf("line %d (%s) starts with export, which is shell, not KEY=VALUE", n, strings.TrimSpace(bare))
		case !envKey.MatchString(key):
			return nil, fmt.Errorf("line %d: the text before '=' is not a variable name (letters, digits, _)", n)
		}
		val = strings.TrimSpace(val)
		switch {
		case len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"':
			var b strings.Builder
			in := val[1 : len(val)-1]
			for i := 0; i < len(in); i++ {
				if in[i] == '\\' && i+1 < len(in) {
					i++
				} else if in[i] == '"' {
					return nil, fmt.Errorf("line %d (%s): unescaped \" inside a quoted value", n, key)
				}
				b.WriteByte(in[i])
			}
			val = b.String()
		case len(val) >= 2 && val[0] == '\'' && val[len(val)-1] == '\'':
			val = val[1 : len(val)-1]
		case strings.ContainsAny(val, `"'`):
			return nil, fmt.Errorf("line %d (%s): unbalanced quotes in its value", n, key)
		}
		env = append(env, key+"="+val)
	}
	return env, sc.Err()
}

// EnvMap is ParseEnvFile as a map; a later line wins, as in systemd.
func EnvMap(data []byte) (map[string]string, error) {
	vars, err := ParseEnvFile(data)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	for _, kv := range vars {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	return env, nil
}
