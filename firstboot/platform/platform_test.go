package platform

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
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
