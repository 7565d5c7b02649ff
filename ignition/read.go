package ignition

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"strings"

	"github.com/coreos/ignition/v2/config/v3_4/types"
	"github.com/vincent-petithory/dataurl"
)

// Ign is a parsed, validated Ignition config.
type Ign = types.Config

// Contents returns a file's bytes from its inline data URL, decompressed.
// Only data URLs are supported: an appliance fetches nothing at boot.
func Contents(f types.File) ([]byte, error) {
	if len(f.Append) > 0 {
		return nil, fmt.Errorf("ignition: %s: append is not supported; give the whole contents", f.Path)
	}
	if f.Contents.Source == nil {
		return []byte{}, nil
	}
	src := *f.Contents.Source
	if !strings.HasPrefix(src, "data:") {
		return nil, fmt.Errorf("ignition: %s: source %.40q is not a data URL; inline the contents, the appliance fetches nothing", f.Path, src)
	}
	u, err := dataurl.DecodeString(src)
	if err != nil {
		return nil, fmt.Errorf("ignition: %s: decode data URL: %w", f.Path, err)
	}
	data := u.Data
	switch c := f.Contents.Compression; {
	case c == nil || *c == "":
	case *c == "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("ignition: %s: gunzip: %w", f.Path, err)
		}
		if data, err = io.ReadAll(zr); err != nil {
			return nil, fmt.Errorf("ignition: %s: gunzip: %w", f.Path, err)
		}
	default:
		return nil, fmt.Errorf("ignition: %s: compression %q is not supported; use gzip or none", f.Path, *c)
	}
	return data, nil
}

// File returns the config's file at path.
func File(cfg Ign, path string) (types.File, bool) {
	for _, f := range cfg.Storage.Files {
		if f.Path == path {
			return f, true
		}
	}
	return types.File{}, false
}

// FileContents returns the contents of the config's file at path.
func FileContents(cfg Ign, path string) ([]byte, error) {
	f, ok := File(cfg, path)
	if !ok {
		return nil, fmt.Errorf("ignition: config has no file %s", path)
	}
	return Contents(f)
}
