package local

import (
	"io"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/spec"
)

// An output directory's cluster under `up`: its run directory holds the
// state, the lock and the tool configs for the forwarded ports; its
// disks directory the data disks, kept across down and up.

// Load reads the state of the cluster under `up` in dir; ErrNotRunning
// when there is none.
func Load(dir outdir.Layout) (*State, error) { return LoadState(dir.RunDir()) }

// LockDir takes dir's run directory lock, for a command that changes the
// local cluster.
func LockDir(dir outdir.Layout) (*Lock, error) { return LockRunDir(dir.RunDir()) }

// Open loads the state of the cluster under `up` in dir, under the run
// directory's lock, which the caller releases. It returns ErrNotRunning
// when there is none (without taking the lock).
func Open(dir outdir.Layout) (*State, *Lock, error) {
	if _, err := Load(dir); err != nil {
		return nil, nil, err
	}
	lock, err := LockDir(dir)
	if err != nil {
		return nil, nil, err
	}
	st, err := Load(dir)
	if err != nil {
		lock.Unlock()
		return nil, nil, err
	}
	return st, lock, nil
}

// Reach maps a member's port to where the operator's machine reaches it
// under `up`: its forwarded loopback port. It is nil (the members' own
// addresses) when no cluster runs from dir.
func Reach(dir outdir.Layout) render.Endpoint {
	st, err := Load(dir)
	if err != nil {
		return nil
	}
	ports := map[string]MemberState{}
	for _, m := range st.Members {
		ports[m.Name] = m
	}
	return func(m spec.Member, port int) string {
		return "127.0.0.1:" + strconv.Itoa(ports[m.Name].HostPort(port))
	}
}

// HostServices are the host's services on the LAN of the cluster under
// `up` in dir (LAN address → host address), nil when none runs.
func HostServices(dir outdir.Layout) map[string]string {
	st, err := Load(dir)
	if err != nil {
		return nil
	}
	return st.HostServices
}

// LANServices are the spec's endpoints that a local cluster's LAN hands
// to the host: an S3 endpoint at an address of the LAN that no member
// has is the same port on the host's loopback (where a test, or the
// operator, runs the S3 server).
func LANServices(c *spec.Cluster) []HostService {
	if c.Backup.S3 == nil {
		return nil
	}
	u, err := url.Parse(c.Backup.S3.Endpoint)
	if err != nil {
		return nil
	}
	ip, err := netip.ParseAddr(u.Hostname())
	if err != nil || !c.Prefix().Contains(ip) {
		return nil
	}
	for _, m := range c.Members {
		if m.Addr() == ip {
			return nil
		}
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	p, _ := strconv.Atoi(port)
	return []HostService{{LAN: netip.AddrPortFrom(ip, uint16(p)), Host: "127.0.0.1:" + port}}
}

// EtcdctlEnvFile and PrometheusFile are the tool configs of a cluster
// under `up`, pointing at its forwarded ports. They live in the run
// directory, beside the state they depend on; render's own copies at the
// top of the output directory always point at the members' addresses.
func EtcdctlEnvFile(dir outdir.Layout) string { return filepath.Join(dir.RunDir(), "etcdctl.env") }
func PrometheusFile(dir outdir.Layout) string { return filepath.Join(dir.RunDir(), "prometheus.yml") }

// WriteToolConfigs writes etcdctl.env, prometheus.yml and its alert
// rules for the forwarded ports of the cluster under `up`.
func WriteToolConfigs(c *spec.Cluster, dir outdir.Layout) error {
	abs, err := filepath.Abs(dir.Dir())
	if err != nil {
		return err
	}
	ep := Reach(dir)
	prom, err := render.Prometheus(c, ep, outdir.Layout(abs))
	if err != nil {
		return err
	}
	rules, err := render.Rules(c)
	if err != nil {
		return err
	}
	_, err = outdir.Write(dir.RunDir(), []outdir.File{
		{Path: filepath.Base(EtcdctlEnvFile(dir)), Data: render.EtcdctlEnv(c, outdir.Layout(abs), ep), Mode: 0o644},
		{Path: filepath.Base(PrometheusFile(dir)), Data: prom, Mode: 0o644},
		{Path: render.RulesFile, Data: rules, Mode: 0o644},
	})
	return err
}

// Down powers the cluster under `up` in dir off under the run
// directory's lock (Down of State), removes the tool configs that
// pointed at it, and writes a line per member to w; an error goes to
// errw as etcdimg reports one, and leaves the tool configs.
func Down(w, errw io.Writer, dir outdir.Layout) {
	lines, err := down(dir)
	if err != nil {
		io.WriteString(errw, "etcdimg: "+err.Error()+"\n")
		return
	}
	for _, line := range lines {
		io.WriteString(w, line+"\n")
	}
}

func down(dir outdir.Layout) ([]string, error) {
	lock, err := LockDir(dir)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	st, err := Load(dir)
	if err != nil {
		return nil, err
	}
	lines := st.Down(time.Minute)
	os.Remove(EtcdctlEnvFile(dir))
	os.Remove(PrometheusFile(dir))
	os.Remove(filepath.Join(dir.RunDir(), render.RulesFile))
	return lines, nil
}
