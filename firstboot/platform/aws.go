package platform

import (
	"fmt"
	"net/http"

	"etcdimg/firstboot/network"
	"etcdimg/internal/layout"
)

func init() {
	register(&Platform{
		Name: layout.PlatformAWS, Cloud: true,
		sources: func() []Source { return []Source{awsIMDS{metadataClient(layout.MetadataAddr)}} },
		clock:   []network.ClockSource{network.NTP("AWS Time Sync Service", awsTimeSync)},
	})
}

// AWS's Time Sync Service, on every instance.
const awsTimeSync = "169.254.169.123"

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
