// Package platform owns where the appliance runs: one file per platform
// (qemu, metal, aws, gcp, azure, openstack), each registering a Platform
// that says where the member's config comes from (its Sources: QEMU's
// fw_cfg, the image's ESP, a cloud's user-data or config drive, which
// a slot installed by an upgrade overrides with its own config), whether
// its address comes by DHCP, its own clock sources, and what it must be
// told once the instance is up (Azure's Ready). Adding a platform is
// adding a file with one register call.
//
// It reads configs and talks to metadata services; it never applies a
// config, configures the network (package network does, with the clock
// sources it is handed) or touches the data disk.
package platform

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"etcdimg/firstboot/internal/console"
	"etcdimg/firstboot/network"
	"etcdimg/ignition/ign"
	"etcdimg/internal/layout"
)

// A Platform is one place the appliance runs, as its file registers it.
type Platform struct {
	// Name is the kernel command line's etcdimg.platform= value.
	Name string
	// Cloud is set when the config is the instance's user-data and the
	// address comes by DHCP: the config is asked for until it parses
	// (within configWait), and the lease must be the spec's address. A
	// slot that an upgrade installed carries the member's own config,
	// which is used instead (readCloudConfig).
	Cloud bool
	// sources are where the config may be, in the order they are tried.
	sources func() []Source
	// clock is the platform's own time sources, asked before the
	// spec's NTP servers.
	clock []network.ClockSource
	// ready, when set, tells the platform the instance has provisioned
	// itself.
	ready func(ctx context.Context) (string, error)
}

// platforms are the registered platforms, by name.
var platforms = map[string]*Platform{}

// register adds a platform; each platform's file calls it once.
func register(p *Platform) {
	if platforms[p.Name] != nil {
		panic("platform " + p.Name + " registered twice")
	}
	platforms[p.Name] = p
}

// ByName is the platform registered as name; any other name is qemu's,
// as an image without etcdimg.platform= is a qemu image.
func ByName(name string) *Platform {
	if p, ok := platforms[name]; ok {
		return p
	}
	return platforms[layout.PlatformQEMU]
}

// Detect is the platform the kernel command line names.
func Detect() *Platform { return ByName(platformFromCmdline(readCmdline())) }

// configWait bounds how long a cloud member asks its metadata service
// for a config (or Azure's wire server for its goal state) before it
// stops, having touched no disk.
const configWait = 60 * time.Second

// ReadConfig reads the member's config from the platform's sources and
// validates it with Ignition's own parser; it also says where it came
// from. On a cloud the booted slot's own config comes first (see
// readCloudConfig); otherwise the user-data is asked for again until it
// gives a config that parses, or until configWait has passed or ctx
// ends.
func (p *Platform) ReadConfig(ctx context.Context) (ign.Config, string, error) {
	if !p.Cloud {
		return readConfig(p.sources())
	}
	return readCloudConfig(ctx, espFile{}, p.sources(), configWait)
}

// readCloudConfig is a cloud member's config: the booted slot's, when it
// carries one, else the instance's user-data. A cloud instance first
// boots the generic image, whose slot carries no config, from its
// user-data; a slot that `etcdimg upgrade` installed carries the
// member's own config, which wins from then on: the user-data seeds the
// first boot only. The slot is asked once, before the user-data and
// outside its retries: a file on the ESP is there or not, and its
// absence costs no wait. A slot config that is there but unreadable or
// does not parse stops the boot rather than falling back on user-data
// that may be older than the slot (a trial slot then rolls back).
func readCloudConfig(ctx context.Context, slot Source, userData []Source, within time.Duration) (ign.Config, string, error) {
	raw, err := slot.Fetch()
	switch {
	case err == nil:
		cfg, err := ign.Parse(raw)
		if err != nil {
			return ign.Config{}, "", fmt.Errorf("config from %s (the booted slot's): %w", slot.Name(), err)
		}
		return cfg, fmt.Sprintf("%s, %d bytes, Ignition %s (the booted slot's; the user-data seeded the first boot only)", slot.Name(), len(raw), cfg.Ignition.Version), nil
	case !errors.Is(err, errNotFound):
		return ign.Config{}, "", fmt.Errorf("%s (the booted slot's config): %w", slot.Name(), err)
	}
	var cfg ign.Config
	raw, from, err := fetchWithRetry(ctx, userData, within, func(b []byte) error {
		var err error
		cfg, err = ign.Parse(b)
		return err
	})
	if err != nil {
		return ign.Config{}, "", err
	}
	return cfg, fmt.Sprintf("%s, %d bytes, Ignition %s", from, len(raw), cfg.Ignition.Version), nil
}

// ClockSources are the platform's own time sources, then the NTP
// servers the config names.
func (p *Platform) ClockSources(ntp []netip.Addr) []network.ClockSource {
	return network.ClockSources(p.clock, ntp)
}

// ReportsReady reports whether the platform must be told that the
// instance is up (ReportReady).
func (p *Platform) ReportsReady() bool { return p.ready != nil }

// ReportReady tells the platform the instance has provisioned itself.
func (p *Platform) ReportReady(ctx context.Context) (string, error) { return p.ready(ctx) }

// FromFwCfg reports whether a config that ReadConfig described as from
// came through QEMU's fw_cfg: QEMU launched the machine with it, and its
// disks are there from power-on.
func FromFwCfg(from string) bool { return strings.HasPrefix(from, fwCfg{}.Name()+",") }

// A Source is one place a member's config may come from. Fetch returns
// errNotFound when the source holds no config. A platform lists its
// sources in its Platform.
type Source interface {
	Name() string
	Fetch() ([]byte, error)
}

// errNotFound is a Source's answer when it holds no config.
var errNotFound = errors.New("not found")

// readConfig takes the first config found and validates it with
// Ignition's own parser.
func readConfig(sources []Source) (ign.Config, string, error) {
	for _, s := range sources {
		raw, err := s.Fetch()
		if errors.Is(err, errNotFound) {
			continue
		}
		if err != nil {
			return ign.Config{}, "", fmt.Errorf("%s: %w", s.Name(), err)
		}
		cfg, err := ign.Parse(raw)
		if err != nil {
			return ign.Config{}, "", fmt.Errorf("config from %s: %w", s.Name(), err)
		}
		return cfg, fmt.Sprintf("%s, %d bytes, Ignition %s", s.Name(), len(raw), cfg.Ignition.Version), nil
	}
	return ign.Config{}, "", errors.New("no config: neither fw_cfg opt/com.coreos/config nor the image's /etcdimg/node.ign is present")
}

// platformFromCmdline reads layout.PlatformArg from a kernel command
// line; images without it are qemu images (fw_cfg, then the ESP).
func platformFromCmdline(cmdline string) string {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, layout.PlatformArg+"="); ok {
			return v
		}
	}
	return layout.PlatformQEMU
}

// maxUserData bounds what a source may return, before and after
// decoding: the rendered configs stay under 16 KiB (AWS's user-data
// limit), so anything far larger is not ours.
const maxUserData = 64 << 10

// decodeUserData accepts a config as it is, gzip'd, base64'd, or both
// (base64 of gzip), as the clouds' consoles and CLIs pass it on.
func decodeUserData(b []byte) ([]byte, error) {
	for range 3 {
		t := bytes.TrimSpace(b)
		switch {
		case len(t) >= 2 && t[0] == 0x1f && t[1] == 0x8b:
			zr, err := gzip.NewReader(bytes.NewReader(t))
			if err != nil {
				return nil, fmt.Errorf("gzip'd user-data: %w", err)
			}
			out, err := io.ReadAll(io.LimitReader(zr, maxUserData+1))
			if err != nil {
				return nil, fmt.Errorf("gzip'd user-data: %w", err)
			}
			if len(out) > maxUserData {
				return nil, fmt.Errorf("gzip'd user-data unpacks to over %d bytes", maxUserData)
			}
			b = out
		case len(t) > 0 && t[0] != '{':
			out, err := base64.StdEncoding.DecodeString(string(t))
			if err != nil {
				return nil, fmt.Errorf("user-data is neither a JSON config nor gzip nor base64 (%.40q…)", t)
			}
			b = out
		default:
			return t, nil
		}
	}
	return nil, errors.New("user-data is encoded more than twice")
}

// metadata is an HTTP client for a link-local metadata service: no
// proxy, short timeouts, small answers.
type metadata struct {
	base string
	hc   *http.Client
}

func metadataClient(addr string) metadata {
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		ResponseHeaderTimeout: 5 * time.Second,
		DisableKeepAlives:     true,
	}
	return metadata{base: "http://" + addr, hc: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// do sends a request and returns the body of a 200; a 404 is errNotFound.
func (m metadata) do(method, path string, header map[string]string, body io.Reader) ([]byte, http.Header, error) {
	req, err := http.NewRequest(method, m.base+path, body)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := m.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxUserData+1))
	if err != nil {
		return nil, nil, err
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, resp.Header, errNotFound
	case resp.StatusCode/100 != 2:
		return nil, resp.Header, fmt.Errorf("%s %s: %s", method, path, resp.Status)
	case len(b) > maxUserData:
		return nil, resp.Header, fmt.Errorf("%s %s: over %d bytes", method, path, maxUserData)
	}
	return b, resp.Header, nil
}

// fetchWithRetry asks the sources until one gives a config that parses,
// or until the time is up: a metadata service that is not answering yet,
// or answers garbage, is asked again. It touches no disk.
func fetchWithRetry(ctx context.Context, sources []Source, within time.Duration, parse func([]byte) error) ([]byte, string, error) {
	deadline := time.Now().Add(within)
	var last error
	lastSaid := time.Now()
	for attempt := 1; ; attempt++ {
		for _, s := range sources {
			raw, err := s.Fetch()
			if err == nil {
				if raw, err = decodeUserData(raw); err == nil {
					if err = parse(raw); err == nil {
						return raw, s.Name(), nil
					}
				}
			}
			if errors.Is(err, errNotFound) {
				err = errors.New("no user-data")
			}
			last = fmt.Errorf("%s: %w", s.Name(), err)
		}
		if time.Now().After(deadline) {
			return nil, "", fmt.Errorf("no usable config after %s (%d attempts): %v; give each instance its member's config (OUT/ignition/NAME.ign) as user-data", within, attempt, last)
		}
		if time.Since(lastSaid) > 10*time.Second {
			logf("read config: %v; retrying", last)
			lastSaid = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil, "", ctx.Err()
		case <-time.After(min(time.Duration(attempt)*500*time.Millisecond, 5*time.Second)):
		}
	}
}

// readCmdline is the kernel command line.
func readCmdline() string {
	b, _ := os.ReadFile("/proc/cmdline")
	return string(b)
}

// logf prints one line to the console.
func logf(format string, args ...any) { console.Logf(format, args...) }
