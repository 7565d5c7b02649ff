package platform

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"etcdimg/ignition/ign"
	"etcdimg/internal/cloudsim"
	"etcdimg/internal/layout"
)

const testConfig = `{"ignition":{"version":"3.4.0"}}`

func gz(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

func b64(b []byte) []byte { return []byte(base64.StdEncoding.EncodeToString(b)) }

func TestDecodeUserData(t *testing.T) {
	cfg := []byte(testConfig)
	for _, tc := range []struct {
		name string
		in   []byte
		err  string
	}{
		{"plain", cfg, ""},
		{"plain with a newline", append(append([]byte{}, cfg...), '\n'), ""},
		{"gzip", gz(cfg), ""},
		{"base64", b64(cfg), ""},
		{"base64 of gzip", append(b64(gz(cfg)), '\n'), ""},
		{"garbage", []byte("#cloud-config\nusers: []"), "neither a JSON config nor gzip nor base64"},
		{"gzip bomb", gz(make([]byte, maxUserData+10)), "unpacks to over"},
		{"broken gzip", []byte{0x1f, 0x8b, 1, 2, 3}, "gzip'd user-data"},
	} {
		got, err := decodeUserData(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || string(got) != testConfig {
			t.Errorf("%s: %q, %v", tc.name, got, err)
		}
	}
}

// simulate serves a platform's metadata interface on loopback and
// returns a client for it.
func simulate(t *testing.T, sim *cloudsim.Server) metadata {
	srv := httptest.NewServer(sim.Metadata())
	t.Cleanup(srv.Close)
	return metadataClient(strings.TrimPrefix(srv.URL, "http://"))
}

// TestCloudSourcesSpeakEachPlatformsProtocol fetches user-data from a
// simulation of each platform's documented interface, and checks that a
// source refuses the wrong platform's server.
func TestCloudSourcesSpeakEachPlatformsProtocol(t *testing.T) {
	sources := map[string]func(metadata) Source{
		"aws":       func(m metadata) Source { return awsIMDS{m} },
		"gcp":       func(m metadata) Source { return gcpMetadata{m} },
		"azure":     func(m metadata) Source { return azureIMDS{m} },
		"openstack": func(m metadata) Source { return openstackMetadata{m} },
	}
	for platform, src := range sources {
		t.Run(platform, func(t *testing.T) {
			sim := &cloudsim.Server{Platform: platform, UserData: gz([]byte(testConfig))}
			md := simulate(t, sim)
			raw, err := src(md).Fetch()
			if err != nil {
				t.Fatal(err)
			}
			if got, err := decodeUserData(raw); err != nil || string(got) != testConfig {
				t.Fatalf("user-data %q: %v", got, err)
			}
			empty := simulate(t, &cloudsim.Server{Platform: platform})
			if _, err := src(empty).Fetch(); err != errNotFound {
				t.Errorf("no user-data: %v, want errNotFound", err)
			}
			for other := range sources {
				if other == platform {
					continue
				}
				if _, err := src(simulate(t, &cloudsim.Server{Platform: other, UserData: []byte(testConfig)})).Fetch(); err == nil {
					t.Errorf("the %s source took user-data from a %s server", platform, other)
				}
			}
		})
	}
}

// TestFetchRetriesThenGivesUp: a server answering garbage is asked again
// until the time is up, then the error says what was wrong; one that
// starts answering well within the time gives its config.
func TestFetchRetriesThenGivesUp(t *testing.T) {
	parse := func(b []byte) error { _, err := ign.Parse(b); return err }
	sim := &cloudsim.Server{Platform: "aws", Garbage: []byte("<html>502 Bad Gateway</html>")}
	md := simulate(t, sim)
	_, _, err := fetchWithRetry(context.Background(), []Source{awsIMDS{md}}, 2*time.Second, parse)
	if err == nil || !strings.Contains(err.Error(), "no usable config after 2s") || !strings.Contains(err.Error(), "neither a JSON config") {
		t.Fatalf("garbage: %v", err)
	}
	if sim.Asked() < 2 {
		t.Errorf("asked %d times", sim.Asked())
	}
	good := &cloudsim.Server{Platform: "gcp", UserData: []byte(`{"ignition":{"version":"3.4.0"`)}
	md = simulate(t, good)
	go func() {
		time.Sleep(time.Second)
		good.UserData = []byte(testConfig) // the user fixed the instance's user-data
	}()
	raw, from, err := fetchWithRetry(context.Background(), []Source{gcpMetadata{md}}, 20*time.Second, parse)
	if err != nil || string(raw) != testConfig || from != "GCP metadata user-data" {
		t.Fatalf("%q from %q: %v", raw, from, err)
	}
}

func TestAzureReportsReady(t *testing.T) {
	sim := &cloudsim.Server{Platform: "azure"}
	srv := httptest.NewServer(sim.WireServer())
	defer srv.Close()
	what, err := azureReportReady(context.Background(), metadataClient(strings.TrimPrefix(srv.URL, "http://")), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r := sim.Reports(); len(r) != 1 || r[0] != "Ready" {
		t.Errorf("reports %v (%s)", r, what)
	}
	dead := httptest.NewServer(sim.Metadata()) // no wire server there
	defer dead.Close()
	if _, err := azureReportReady(context.Background(), metadataClient(strings.TrimPrefix(dead.URL, "http://")), time.Second); err == nil {
		t.Error("a server without the wire protocol took the report")
	}
}

func TestConfigSourcesByPlatform(t *testing.T) {
	for platform, want := range map[string]string{
		"qemu":      "fw_cfg opt/com.coreos/config, ESP /etcdimg/node.ign",
		"metal":     "ESP /etcdimg/node.ign",
		"aws":       "AWS IMDSv2 user-data",
		"gcp":       "GCP metadata user-data",
		"azure":     "Azure IMDS userData",
		"openstack": "OpenStack config drive, OpenStack metadata user_data",
	} {
		var names []string
		for _, s := range ByName(platform).sources() {
			names = append(names, s.Name())
		}
		if got := strings.Join(names, ", "); got != want {
			t.Errorf("%s: %s, want %s", platform, got, want)
		}
	}
}

func TestPlatformFromCmdline(t *testing.T) {
	for in, want := range map[string]string{
		"console=ttyS0 quiet etcdimg.platform=aws\n": "aws",
		"console=ttyS0 quiet":                        "qemu",
		"etcdimg.platform=gcp panic=-1":              "gcp",
	} {
		if got := platformFromCmdline(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

// TestClockSources: the platform's source first, each address once.
func TestClockSources(t *testing.T) {
	for _, tc := range []struct {
		platform string
		servers  []string
		want     []string
	}{
		{layout.PlatformQEMU, nil, nil},
		{layout.PlatformQEMU, []string{"192.168.2.1", "2001:db8::1"}, []string{"NTP 192.168.2.1", "NTP 2001:db8::1"}},
		{layout.PlatformAWS, []string{awsTimeSync, "192.168.2.1", "192.168.2.1"}, []string{"AWS Time Sync Service " + awsTimeSync, "NTP 192.168.2.1"}},
	} {
		var addrs []netip.Addr
		for _, s := range tc.servers {
			addrs = append(addrs, netip.MustParseAddr(s))
		}
		var got []string
		for _, s := range ByName(tc.platform).ClockSources(addrs) {
			got = append(got, s.Name)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s %v: %q, want %q", tc.platform, tc.servers, got, tc.want)
		}
	}
}

// slotFile stands for the booted slot's config on the ESP (espFile reads
// what /init bound there): a config, none (errNotFound, a generic
// image's slot), or an error; it counts how often it is asked.
type slotFile struct {
	data  []byte
	err   error
	asked int
}

func (s *slotFile) Name() string { return espFile{}.Name() }

func (s *slotFile) Fetch() ([]byte, error) {
	s.asked++
	return s.data, s.err
}

// configNamed is a config that says where it came from: one file, at
// path, without contents.
func configNamed(path string) []byte {
	return []byte(`{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"` + path + `"}]}}`)
}

// TestACloudMemberReadsItsSlotsConfigBeforeItsUserData: on every cloud a
// slot that carries a config (one an upgrade installed) wins over the
// user-data, which is then not even asked for; a generic image's slot,
// which carries none, falls back on the user-data at once (no wait for
// the missing file) and with the user-data's own retries; a slot config
// that is there but broken stops the boot instead of falling back on
// user-data older than the slot.
func TestACloudMemberReadsItsSlotsConfigBeforeItsUserData(t *testing.T) {
	const (
		fromSlot     = "/etc/etcdimg/from-slot"
		fromUserData = "/etc/etcdimg/from-user-data"
	)
	sources := map[string]func(metadata) Source{
		layout.PlatformAWS:       func(m metadata) Source { return awsIMDS{m} },
		layout.PlatformGCP:       func(m metadata) Source { return gcpMetadata{m} },
		layout.PlatformAzure:     func(m metadata) Source { return azureIMDS{m} },
		layout.PlatformOpenStack: func(m metadata) Source { return openstackMetadata{m} },
	}
	for _, tc := range []struct {
		name     string
		slot     slotFile
		userData []byte // nil: the instance has none
		// want is the config's one file, "" for an error saying err.
		want, err string
		asked     bool // the metadata service was asked for the user-data
	}{
		{name: "an upgraded slot's config", slot: slotFile{data: configNamed(fromSlot)}, userData: gz(configNamed(fromUserData)),
			want: fromSlot},
		{name: "an upgraded slot's config, the user-data gone", slot: slotFile{data: configNamed(fromSlot)},
			want: fromSlot},
		{name: "a generic slot: the user-data", slot: slotFile{err: errNotFound}, userData: gz(configNamed(fromUserData)),
			want: fromUserData, asked: true},
		{name: "a generic slot, no user-data", slot: slotFile{err: errNotFound},
			err: "no usable config after 1s", asked: true},
		{name: "a slot config that does not parse", slot: slotFile{data: []byte(`{"ignition":{"version":"3.4.0"`)}, userData: gz(configNamed(fromUserData)),
			err: "config from ESP /etcdimg/node.ign (the booted slot's)"},
		{name: "a slot config that cannot be read", slot: slotFile{err: syscall.EIO}, userData: gz(configNamed(fromUserData)),
			err: "ESP /etcdimg/node.ign (the booted slot's config): input/output error"},
	} {
		for platform, src := range sources {
			t.Run(tc.name+"/"+platform, func(t *testing.T) {
				sim := &cloudsim.Server{Platform: platform, UserData: tc.userData}
				slot := tc.slot
				start := time.Now()
				cfg, from, err := readCloudConfig(context.Background(), &slot, []Source{src(simulate(t, sim))}, time.Second)
				took := time.Since(start)
				if slot.asked != 1 {
					t.Errorf("the slot's config was asked for %d times, want once", slot.asked)
				}
				if got := sim.Asked() > 0; got != tc.asked {
					t.Errorf("the metadata service was asked %d times", sim.Asked())
				}
				if tc.err != "" {
					if err == nil || !strings.Contains(err.Error(), tc.err) {
						t.Fatalf("err %v, want %q", err, tc.err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if len(cfg.Storage.Files) != 1 || cfg.Storage.Files[0].Path != tc.want {
					t.Errorf("config %+v, want the one with %s", cfg.Storage.Files, tc.want)
				}
				// The console says honestly where the config came from.
				wantFrom := fmt.Sprintf("%s, %d bytes, Ignition 3.4.0", src(metadata{}).Name(), len(configNamed(fromUserData)))
				if tc.want == fromSlot {
					wantFrom = fmt.Sprintf("ESP /etcdimg/node.ign, %d bytes, Ignition 3.4.0 (the booted slot's; the user-data seeded the first boot only)", len(configNamed(fromSlot)))
				}
				if from != wantFrom {
					t.Errorf("from %q, want %q", from, wantFrom)
				}
				// A missing slot config costs no wait: the user-data
				// answers at once, so the config is there at once.
				if took > 500*time.Millisecond {
					t.Errorf("took %s", took)
				}
			})
		}
	}
}
