// Package cloudsim simulates, for tests, the interfaces through which a
// cloud hands an instance its user-data, as each platform documents
// them: AWS's instance metadata service v2 (a session token from a PUT,
// then requests carrying it), GCP's metadata server (Metadata-Flavor:
// Google both ways), Azure's IMDS (Metadata: true, userData in base64)
// and wire server (goal state, then a health report saying Ready), and
// OpenStack's metadata service. Nothing here is used by the product.
package cloudsim

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

// Server answers as one platform's metadata service would.
type Server struct {
	Platform string // aws, gcp, azure, openstack
	// UserData is what the instance was started with; nil answers that
	// there is none.
	UserData []byte
	// Garbage, when set, answers every user-data request with 200 and
	// these bytes instead.
	Garbage []byte

	mu      sync.Mutex
	tokens  map[string]bool
	reports []string // Azure health states received, in order
	asked   int
}

// Azure's goal state identifiers, which the health report must echo.
const (
	AzureIncarnation = "3"
	AzureContainer   = "c6d5b9a1-0f0e-4f3c-9d4e-2d1b8f7a6e55"
	AzureInstance    = "d3f1c7a2-5b6e-4a8d-9c0b-1e2f3a4b5c6d._etcd-1"
)

// Metadata is the handler at 169.254.169.254.
func (s *Server) Metadata() http.Handler {
	mux := http.NewServeMux()
	switch s.Platform {
	case "aws":
		mux.HandleFunc("/latest/api/token", s.awsToken)
		mux.HandleFunc("/latest/user-data", s.awsUserData)
	case "gcp":
		mux.HandleFunc("/computeMetadata/v1/instance/attributes/user-data", s.gcpUserData)
	case "azure":
		mux.HandleFunc("/metadata/instance/compute/userData", s.azureUserData)
	case "openstack":
		mux.HandleFunc("/openstack/latest/user_data", func(w http.ResponseWriter, r *http.Request) { s.userData(w, s.UserData) })
	}
	return mux
}

// Asked is how many user-data requests were answered.
func (s *Server) Asked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.asked
}

// SetGarbage makes every later user-data request answer b (as Garbage
// does), while the instance runs: what a member asks at its next boot.
func (s *Server) SetGarbage(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Garbage = b
}

func (s *Server) userData(w http.ResponseWriter, data []byte) {
	s.mu.Lock()
	s.asked++
	garbage := s.Garbage
	s.mu.Unlock()
	if garbage != nil {
		w.Write(garbage)
		return
	}
	if data == nil {
		http.NotFound(w, nil)
		return
	}
	w.Write(data)
}

// awsToken: PUT with a TTL of 1 to 21600 seconds gives a token; any other
// method, or a request forwarded by a proxy, is refused, as IMDSv2 does.
func (s *Server) awsToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.Header.Get("X-Forwarded-For") != "" {
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	ttl, err := strconv.Atoi(r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds"))
	if err != nil || ttl < 1 || ttl > 21600 {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	b := make([]byte, 24)
	rand.Read(b)
	tok := base64.RawURLEncoding.EncodeToString(b)
	s.mu.Lock()
	if s.tokens == nil {
		s.tokens = map[string]bool{}
	}
	s.tokens[tok] = true
	s.mu.Unlock()
	w.Header().Set("X-aws-ec2-metadata-token-ttl-seconds", strconv.Itoa(ttl))
	io.WriteString(w, tok)
}

// awsUserData needs a token (IMDSv2 only, as AWS recommends setting it).
func (s *Server) awsUserData(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	ok := s.tokens[r.Header.Get("X-aws-ec2-metadata-token")]
	s.mu.Unlock()
	if !ok {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	s.userData(w, s.UserData)
}

func (s *Server) gcpUserData(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Metadata-Flavor", "Google")
	if r.Header.Get("Metadata-Flavor") != "Google" || r.Header.Get("X-Forwarded-For") != "" {
		http.Error(w, "Missing required header: Metadata-Flavor", http.StatusForbidden)
		return
	}
	s.userData(w, s.UserData)
}

// azureUserData: Azure keeps userData as the base64 the user gave, and
// returns it so with format=text.
func (s *Server) azureUserData(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Metadata") != "true" || r.Header.Get("X-Forwarded-For") != "" {
		http.Error(w, `{"error":"Bad request. Required metadata header not specified"}`, http.StatusBadRequest)
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		http.Error(w, `{"error":"Bad request. api-version was not specified in the request"}`, http.StatusBadRequest)
		return
	}
	data := []byte{}
	if s.UserData != nil {
		data = []byte(base64.StdEncoding.EncodeToString(s.UserData))
	}
	s.userData(w, data)
}

// WireServer is Azure's wire server handler, at 168.63.129.16.
func (s *Server) WireServer() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("x-ms-version") == "" {
			http.Error(w, "missing x-ms-version", http.StatusBadRequest)
			return
		}
		switch comp := r.URL.Query().Get("comp"); {
		case r.Method == http.MethodGet && comp == "goalstate":
			w.Header().Set("Content-Type", "text/xml; charset=utf-8")
			fmt.Fprintf(w, `<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>%s</Incarnation>
  <Machine><ExpectedState>Started</ExpectedState><StopRolesDeadlineHint>300000</StopRolesDeadlineHint></Machine>
  <Container>
    <ContainerId>%s</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>%s</InstanceId>
        <State>Started</State>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
`, AzureIncarnation, AzureContainer, AzureInstance)
		case r.Method == http.MethodPost && comp == "health":
			var h struct {
				Incarnation string `xml:"GoalStateIncarnation"`
				Container   string `xml:"Container>ContainerId"`
				Instance    string `xml:"Container>RoleInstanceList>Role>InstanceId"`
				State       string `xml:"Container>RoleInstanceList>Role>Health>State"`
			}
			body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
			if !strings.HasPrefix(r.Header.Get("Content-Type"), "text/xml") || xml.Unmarshal(body, &h) != nil ||
				h.Incarnation != AzureIncarnation || h.Container != AzureContainer || h.Instance != AzureInstance {
				http.Error(w, "bad health report", http.StatusBadRequest)
				return
			}
			s.mu.Lock()
			s.reports = append(s.reports, h.State)
			s.mu.Unlock()
		default:
			http.NotFound(w, r)
		}
	})
}

// Reports are the health states the instance reported to the wire
// server, in order.
func (s *Server) Reports() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.reports...)
}

// ConfigDrive writes an OpenStack config drive at path: a file system
// labelled config-2 (ISO 9660 with Rock Ridge, as Nova writes it by
// default, or vfat) holding openstack/latest/user_data.
func ConfigDrive(path string, userData []byte, fstype string) error {
	size := int64(8 << 20)
	typ, sector := filesystem.TypeISO9660, diskfs.SectorSize(2048)
	if fstype == "vfat" {
		size, typ, sector = 64<<20, filesystem.TypeFat32, diskfs.SectorSize512
	}
	os.Remove(path)
	d, err := diskfs.Create(path, size, sector)
	if err != nil {
		return err
	}
	defer d.Close()
	fs, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 0, FSType: typ, VolumeLabel: "config-2"})
	if err != nil {
		return err
	}
	for _, dir := range []string{"/openstack", "/openstack/latest"} {
		if err := fs.Mkdir(dir); err != nil {
			return err
		}
	}
	f, err := fs.OpenFile("/openstack/latest/user_data", os.O_CREATE|os.O_RDWR)
	if err != nil {
		return err
	}
	if _, err := f.Write(userData); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if iso, ok := fs.(*iso9660.FileSystem); ok {
		return iso.Finalize(iso9660.FinalizeOptions{RockRidge: true, VolumeIdentifier: "config-2"})
	}
	return nil
}

// ServeNTP answers NTP client requests on pc as a stratum-2 server whose
// clock is this machine's plus offset (AWS's Time Sync Service at
// 169.254.169.123, or GCP's metadata server, speak plain NTP), until pc
// is closed.
func ServeNTP(pc net.PacketConn, offset time.Duration) {
	buf := make([]byte, 512)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		rx := time.Now().Add(offset)
		if n < 48 || buf[0]&7 != 3 {
			continue
		}
		resp := make([]byte, 48)
		resp[0] = 0<<6 | 4<<3 | 4 // no leap warning, version 4, server
		resp[1] = 2
		resp[2], resp[3] = buf[2], 0xec
		copy(resp[12:16], "SIM.")
		binary.BigEndian.PutUint64(resp[16:], ntpTime(rx))
		copy(resp[24:32], buf[40:48]) // originate: the client's transmit
		binary.BigEndian.PutUint64(resp[32:], ntpTime(rx))
		binary.BigEndian.PutUint64(resp[40:], ntpTime(time.Now().Add(offset)))
		pc.WriteTo(resp, from)
	}
}

func ntpTime(t time.Time) uint64 {
	d := t.Sub(time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC))
	return uint64(d/time.Second)<<32 | uint64(d%time.Second)<<32/uint64(time.Second)
}
