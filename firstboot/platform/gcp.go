package platform

import (
	"errors"
	"net/http"

	"etcdimg/firstboot/network"
	"etcdimg/internal/layout"
)

func init() {
	register(&Platform{
		Name: layout.PlatformGCP, Cloud: true,
		sources: func() []Source { return []Source{gcpMetadata{metadataClient(layout.MetadataAddr)}} },
		clock:   []network.ClockSource{network.NTP("GCP metadata server", layout.MetadataAddr)},
	})
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
