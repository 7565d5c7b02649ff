package firstboot

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"etcdimg/internal/layout"
)

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

// isCloud reports whether the platform's config is the instance's
// user-data and its address comes by DHCP.
func isCloud(platform string) bool {
	switch platform {
	case layout.PlatformAWS, layout.PlatformGCP, layout.PlatformAzure, layout.PlatformOpenStack:
		return true
	}
	return false
}

// configSources are tried in order. On qemu: QEMU's fw_cfg first, so
// that one base image can serve every member, then the config embedded
// in the image; on metal: the embedded config. On a cloud: the
// platform's own user-data.
func configSources(platform string) []Source {
	md := metadataClient(layout.MetadataAddr)
	switch platform {
	case layout.PlatformAWS:
		return []Source{awsIMDS{md}}
	case layout.PlatformGCP:
		return []Source{gcpMetadata{md}}
	case layout.PlatformAzure:
		return []Source{azureIMDS{md}}
	case layout.PlatformOpenStack:
		return []Source{configDrive{}, openstackMetadata{md}}
	case layout.PlatformMetal:
		return []Source{espFile{}}
	}
	return []Source{fwCfg{}, espFile{}}
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

// awsIMDS is EC2's instance metadata service, version 2: a session token
// from a PUT, then the user-data with it.
type awsIMDS struct{ md metadata }

func (awsIMDS) Name() string { return "AWS IMDSv2 user-data" }

func (s awsIMDS) Fetch() ([]byte, error) {
	token, _, err := s.md.do(http.MethodPut, "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "300"}, nil)
	if err != nil {
		return nil, fmt.Errorf("session token: %w", err)
	}
	b, _, err := s.md.do(http.MethodGet, "/latest/user-data", map[string]string{"X-aws-ec2-metadata-token": string(token)}, nil)
	return b, err
}

// gcpMetadata is Compute Engine's metadata server; the instance
// attribute user-data holds the config, as Fedora CoreOS reads it.
type gcpMetadata struct{ md metadata }

func (gcpMetadata) Name() string { return "GCP metadata user-data" }

func (s gcpMetadata) Fetch() ([]byte, error) {
	b, h, err := s.md.do(http.MethodGet, "/computeMetadata/v1/instance/attributes/user-data", map[string]string{"Metadata-Flavor": "Google"}, nil)
	if err == nil && h.Get("Metadata-Flavor") != "Google" {
		return nil, errors.New("the answer lacks Metadata-Flavor: Google; not GCP's metadata server")
	}
	return b, err
}

// azureIMDS is Azure's instance metadata service: userData, base64.
type azureIMDS struct{ md metadata }

func (azureIMDS) Name() string { return "Azure IMDS userData" }

func (s azureIMDS) Fetch() ([]byte, error) {
	b, _, err := s.md.do(http.MethodGet, "/metadata/instance/compute/userData?api-version=2021-01-01&format=text", map[string]string{"Metadata": "true"}, nil)
	if err == nil && len(bytes.TrimSpace(b)) == 0 {
		return nil, errNotFound
	}
	return b, err
}

// openstackMetadata is OpenStack's metadata service, for clouds without
// a config drive.
type openstackMetadata struct{ md metadata }

func (openstackMetadata) Name() string { return "OpenStack metadata user_data" }

func (s openstackMetadata) Fetch() ([]byte, error) {
	b, _, err := s.md.do(http.MethodGet, "/openstack/latest/user_data", nil, nil)
	return b, err
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

// Azure's wire server protocol, as the Azure agent and cloud-init speak
// it: read the goal state, then post a health report saying Ready.
const azureWireVersion = "2012-11-30"

type azureGoalState struct {
	Incarnation string `xml:"Incarnation"`
	Container   struct {
		ContainerID string `xml:"ContainerId"`
		Instances   []struct {
			InstanceID string `xml:"InstanceId"`
		} `xml:"RoleInstanceList>RoleInstance"`
	} `xml:"Container"`
}

const azureHealthReport = `<?xml version="1.0" encoding="utf-8"?>
<Health xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <GoalStateIncarnation>%s</GoalStateIncarnation>
  <Container>
    <ContainerId>%s</ContainerId>
    <RoleInstanceList>
      <Role>
        <InstanceId>%s</InstanceId>
        <Health>
          <State>Ready</State>
        </Health>
      </Role>
    </RoleInstanceList>
  </Container>
</Health>
`

// azureReportReady tells Azure the VM has provisioned itself, as an
// image without the Azure agent must; Azure otherwise marks the
// deployment failed after its provisioning timeout.
func azureReportReady(ctx context.Context, wire metadata, within time.Duration) (string, error) {
	deadline := time.Now().Add(within)
	hdr := map[string]string{"x-ms-version": azureWireVersion, "x-ms-agent-name": "etcdimg"}
	var last error
	for attempt := 1; ; attempt++ {
		if last = azureReady(wire, hdr); last == nil {
			return fmt.Sprintf("reported Ready to the wire server (attempt %d)", attempt), nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("azure: %w", last)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func azureReady(wire metadata, hdr map[string]string) error {
	b, _, err := wire.do(http.MethodGet, "/machine/?comp=goalstate", hdr, nil)
	if err != nil {
		return fmt.Errorf("goal state: %w", err)
	}
	var gs azureGoalState
	if err := xml.Unmarshal(b, &gs); err != nil {
		return fmt.Errorf("goal state: %w", err)
	}
	if gs.Incarnation == "" || gs.Container.ContainerID == "" || len(gs.Container.Instances) == 0 {
		return errors.New("goal state: no incarnation, container or role instance")
	}
	report := fmt.Sprintf(azureHealthReport, xmlText(gs.Incarnation), xmlText(gs.Container.ContainerID), xmlText(gs.Container.Instances[0].InstanceID))
	h := map[string]string{"Content-Type": "text/xml;charset=utf-8"}
	for k, v := range hdr {
		h[k] = v
	}
	if _, _, err := wire.do(http.MethodPost, "/machine/?comp=health", h, strings.NewReader(report)); err != nil {
		return fmt.Errorf("health report: %w", err)
	}
	return nil
}

func xmlText(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

// readCmdline is the kernel command line.
func readCmdline() string {
	b, _ := os.ReadFile("/proc/cmdline")
	return string(b)
}
