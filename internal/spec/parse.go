package spec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxSpecBytes bounds a spec file: a nine-member spec with every field
// is under 2 KiB.
const MaxSpecBytes = 1 << 20

// ReadFile reads a spec file, at most MaxSpecBytes of it (plus one byte,
// to tell a larger file), and only a regular file (ReadInput).
func ReadFile(path string) ([]byte, error) { return ReadInput(path, MaxSpecBytes) }

// Parse decodes etcdimg.yaml strictly (an unknown field is an error), fills
// what it leaves out with the defaults, and validates the result. source
// names the file in errors.
func Parse(data []byte, source string) (*Cluster, error) {
	if len(data) > MaxSpecBytes {
		return nil, fmt.Errorf("spec: %s is over %d KiB; a spec is a few KiB: is it the right file?", source, MaxSpecBytes>>10)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("spec: %s is empty; run `etcdimg init` to write a starting spec", source)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("spec: %s: %s; fix the YAML syntax", source, oneLine(err.Error()))
	}

	c := Default(0)
	c.Network = Network{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, decodeError(source, &root, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("spec: %s holds more than one YAML document (a second `---`); keep one spec per file", source)
	}
	if c.Network.CIDR == "" && c.Network.Gateway == "" && len(c.Network.DNS) == 0 {
		c.Network = Default(0).Network
	}
	c.written = scalars(&root)
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, source)
	}
	return c, nil
}

// scalars maps the path of every scalar value of the document
// (backup.maxAge) to its text as written, so that errors quote a value
// as the operator wrote it.
func scalars(root *yaml.Node) written {
	w := written{}
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, prefix)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				path := n.Content[i].Value
				if prefix != "" {
					path = prefix + "." + path
				}
				walk(n.Content[i+1], path)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, fmt.Sprintf("%s[%d]", prefix, i))
			}
		case yaml.ScalarNode:
			w[prefix] = n.Value
		}
	}
	walk(root, "")
	return w
}

// Marshal writes the spec as etcdimg.yaml, with a header that says what
// the file is.
func Marshal(c *Cluster) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# etcdimg cluster spec: edit it, then run `etcdimg render --config` on it.\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, fmt.Errorf("spec: encode: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("spec: encode: %w", err)
	}
	return b.Bytes(), nil
}

var (
	unknownFieldRE = regexp.MustCompile(`^line (\d+): field (\S+) not found in type`)
	typeErrorRE    = regexp.MustCompile("^line (\\d+): cannot unmarshal !!(\\w+) `?([^`]*)`? into (.+)$")
	lineRE         = regexp.MustCompile(`^line (\d+): (.*)$`)
)

// decodeError turns a yaml.v3 error into one line that names the field by
// its path (members[1].ip), found from the line number yaml.v3 reports.
func decodeError(source string, root *yaml.Node, err error) error {
	var te *yaml.TypeError
	var fe fieldValueError
	switch {
	case errors.As(err, &te) && len(te.Errors) > 0:
		msg := te.Errors[0]
		if m := unknownFieldRE.FindStringSubmatch(msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			return fmt.Errorf("spec: %s: unknown field %s (line %s); remove it or fix its spelling", source, keyPathAt(root, line, m[2]), m[1])
		}
		if m := typeErrorRE.FindStringSubmatch(msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			return fmt.Errorf("spec: %s: %s: %q is not a valid %s (line %s); %s", source, valuePathAt(root, line, m[3]), m[3], goTypeName(m[4]), m[1], typeHint(m[4]))
		}
		return fmt.Errorf("spec: %s: %s", source, oneLine(msg))
	case errors.As(err, &fe):
		return fmt.Errorf("spec: %s: %s: %s", source, valuePathAt(root, fe.line, fe.value), fe.msg)
	}
	if m := lineRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		return fmt.Errorf("spec: %s: line %d: %s", source, line, m[2])
	}
	return fmt.Errorf("spec: %s: %s", source, oneLine(err.Error()))
}

func goTypeName(t string) string {
	switch {
	case strings.Contains(t, "int"):
		return "whole number"
	case strings.HasPrefix(t, "[]"):
		return "list"
	case strings.HasPrefix(t, "spec."):
		return "mapping"
	}
	return t
}

func typeHint(t string) string {
	switch {
	case strings.Contains(t, "int"):
		return "write a whole number such as 5000"
	case strings.HasPrefix(t, "[]"):
		return "write a YAML list"
	case strings.HasPrefix(t, "spec."):
		return "write a YAML mapping of its fields"
	}
	return "see the spec reference, docs/spec.md"
}

// keyPathAt returns the path of the mapping key called key on line.
func keyPathAt(root *yaml.Node, line int, key string) string {
	if p, ok := findPath(root, "", func(k, _ *yaml.Node) bool { return k != nil && k.Line == line && k.Value == key }); ok {
		return p
	}
	return key
}

// valuePathAt returns the path of the scalar value written on line, or
// failing that of the first key on that line.
func valuePathAt(root *yaml.Node, line int, value string) string {
	if p, ok := findPath(root, "", func(_, v *yaml.Node) bool {
		return v.Kind == yaml.ScalarNode && v.Line == line && v.Value == value
	}); ok {
		return p
	}
	if p, ok := findPath(root, "", func(k, _ *yaml.Node) bool { return k != nil && k.Line == line }); ok {
		return p
	}
	return fmt.Sprintf("line %d", line)
}

// findPath walks the document and returns the dotted path of the first
// (key, value) pair for which match holds. For sequence items key is nil.
func findPath(n *yaml.Node, prefix string, match func(k, v *yaml.Node) bool) (string, bool) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if p, ok := findPath(c, prefix, match); ok {
				return p, true
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			path := k.Value
			if prefix != "" {
				path = prefix + "." + k.Value
			}
			if match(k, v) {
				return path, true
			}
			if p, ok := findPath(v, path, match); ok {
				return p, true
			}
		}
	case yaml.SequenceNode:
		for i, v := range n.Content {
			path := fmt.Sprintf("%s[%d]", prefix, i)
			if match(nil, v) {
				return path, true
			}
			if p, ok := findPath(v, path, match); ok {
				return p, true
			}
		}
	}
	return "", false
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "yaml: ", "")), " ")
}
