package platform

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"etcdimg/firstboot/network"
	"etcdimg/internal/layout"
)

func init() {
	register(&Platform{
		Name: layout.PlatformAzure, Cloud: true,
		sources: func() []Source { return []Source{azureIMDS{metadataClient(layout.MetadataAddr)}} },
		clock:   []network.ClockSource{network.HypervPTP("Azure host clock (Hyper-V PTP)")},
		ready: func(ctx context.Context) (string, error) {
			return azureReportReady(ctx, metadataClient(layout.AzureWireServer), configWait)
		},
	})
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
