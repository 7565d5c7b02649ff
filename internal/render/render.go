package render

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"etcdimg/ignition"
	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/restore"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// Source says where LoadSpec should take the spec from.
type Source struct {
	ConfigPath string // --config; "" when not given
	Nodes      int    // --nodes
	NodesSet   bool   // whether --nodes was given
}

// LoadSpec picks the spec for a run on dir: --config if given, else the
// spec a previous run left in dir, else the default plan with --nodes
// members (3 when not given). It returns the spec and where it came from.
func LoadSpec(src Source, dir outdir.Layout) (*spec.Cluster, string, error) {
	if src.ConfigPath != "" && src.NodesSet {
		return nil, "", errors.New("--nodes and --config both given; use one: --nodes makes the default spec, --config reads yours")
	}
	if src.ConfigPath != "" {
		return readSpec(src.ConfigPath)
	}
	if _, err := os.Stat(dir.Spec()); err == nil {
		c, from, err := readSpec(dir.Spec())
		if err != nil {
			return nil, "", err
		}
		if src.NodesSet && src.Nodes != len(c.Members) {
			return nil, "", fmt.Errorf("--nodes %d but %s has %d members; edit that spec and pass --config, or pick another --out", src.Nodes, dir.Spec(), len(c.Members))
		}
		return c, from, nil
	}
	n := 3
	if src.NodesSet {
		n = src.Nodes
	}
	if n < 1 || n > spec.MaxMembers {
		return nil, "", fmt.Errorf("--nodes %d: want 1 to %d members (3 or 5 tolerate failures)", n, spec.MaxMembers)
	}
	c := spec.Default(n)
	if err := c.Validate(); err != nil {
		return nil, "", err
	}
	return c, fmt.Sprintf("default spec, %d members", n), nil
}

func readSpec(path string) (*spec.Cluster, string, error) {
	b, err := spec.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("spec: %w; pass an existing file to --config, or run `etcdimg init` to write one", err)
	}
	c, err := spec.Parse(b, path)
	if err != nil {
		return nil, "", err
	}
	// The files the spec names by relative paths are beside it, not in
	// the working directory.
	c.ResolveFiles(filepath.Dir(path))
	return c, path, nil
}

// Result says what a run wrote.
type Result struct {
	Files   []string // every file of the directory, relative
	Changed []string // the ones this run wrote
	Issued  []string // PKI files newly issued
	PKI     *pki.Set
	// Ignition holds each member's config by name, as written: build
	// puts these bytes in the images, never a re-read of the files.
	Ignition map[string][]byte
	// Warnings say what the run found open to other users and closed.
	Warnings []string
	// Retired are the files of members no longer in the spec, moved
	// under retired/ (relative paths, before the move).
	Retired []string
}

// Run renders c into dir.
func Run(c *spec.Cluster, dir outdir.Layout) (*Result, error) {
	warnings, err := outdir.Guard(dir.Dir())
	if err != nil {
		return nil, err
	}
	files, set, err := Files(c, dir)
	if err != nil {
		return nil, err
	}
	changed, err := outdir.Write(dir.Dir(), files)
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	retired, err := retire(c, dir, time.Now())
	if err != nil {
		return nil, err
	}
	r := &Result{Retired: retired, Changed: changed, Issued: set.Issued, PKI: set, Ignition: map[string][]byte{}, Warnings: append(warnings, set.Warnings...)}
	for _, f := range files {
		r.Files = append(r.Files, f.Path)
	}
	for _, m := range c.Members {
		rel, _ := dir.Rel(dir.Ignition(m.Name))
		for _, f := range files {
			if f.Path == rel {
				r.Ignition[m.Name] = f.Data
			}
		}
	}
	return r, nil
}

// Files computes every file of the output directory for c, without
// writing any.
func Files(c *spec.Cluster, dir outdir.Layout) ([]outdir.File, *pki.Set, error) {
	if err := checkNames(c, dir); err != nil {
		return nil, nil, err
	}
	saved, s3Files, s3Creds, s3CA, err := s3Inputs(c, dir)
	if err != nil {
		return nil, nil, err
	}
	specYAML, err := spec.Marshal(saved)
	if err != nil {
		return nil, nil, err
	}
	set, err := pki.Ensure(c, dir.PKI())
	if err != nil {
		return nil, nil, err
	}
	rel := func(p string) string { r, _ := dir.Rel(p); return r }
	files := append([]outdir.File{{Path: rel(dir.Spec()), Data: specYAML, Mode: 0o644}}, s3Files...)
	for _, f := range set.Files() {
		files = append(files, outdir.File{Path: rel(dir.PKIFile(f.Name)), Data: f.Data, Mode: f.Mode})
	}
	// A restored cluster's members carry its token and name its snapshot.
	plan, err := restore.Load(dir)
	if err != nil {
		return nil, nil, err
	}
	var opts ignition.Options
	if plan != nil {
		opts.Token, opts.Restore = plan.Token, plan.Config()
	}
	// The images name the cluster they belong to as recorded, not as
	// the current spec's member list would give it, with its token.
	rec, token, err := clusterRecord(c, dir, plan)
	if err != nil {
		return nil, nil, err
	}
	opts.Token = token
	if rec != nil {
		opts.ClusterID = rec.ID()
		recFile, err := rec.file(dir)
		if err != nil {
			return nil, nil, err
		}
		files = append(files, recFile)
	}
	opts.S3Credentials, opts.S3CA = s3Creds, s3CA
	for _, m := range c.Members {
		p := set.Members[m.Name]
		cfg, err := ignition.Render(c, m, ignition.Certs{CA: set.CACert, Cert: p.Cert, Key: p.Key}, opts)
		if err != nil {
			return nil, nil, err
		}
		// The configs hold member keys: readable by the owner only.
		files = append(files,
			outdir.File{Path: rel(dir.Ignition(m.Name)), Data: cfg.Ignition, Mode: 0o600},
			outdir.File{Path: rel(dir.Butane(m.Name)), Data: cfg.Butane, Mode: 0o600},
		)
	}
	abs, err := filepath.Abs(dir.Dir())
	if err != nil {
		return nil, nil, fmt.Errorf("render: %w", err)
	}
	files = append(files, outdir.File{Path: rel(dir.EtcdctlEnv()), Data: EtcdctlEnv(c, outdir.Layout(abs), nil), Mode: 0o644})
	prom, err := Prometheus(c, nil, outdir.Layout(abs))
	if err != nil {
		return nil, nil, err
	}
	rules, err := Rules(c)
	if err != nil {
		return nil, nil, err
	}
	dash, err := Dashboard(c)
	if err != nil {
		return nil, nil, err
	}
	kubeadm, err := KubeadmConfig(c)
	if err != nil {
		return nil, nil, err
	}
	k3s, err := K3sConfig(c)
	if err != nil {
		return nil, nil, err
	}
	files = append(files,
		outdir.File{Path: rel(dir.Prometheus()), Data: prom, Mode: 0o644},
		outdir.File{Path: RulesFile, Data: rules, Mode: 0o644},
		outdir.File{Path: rel(dir.Dashboard()), Data: dash, Mode: 0o644},
		outdir.File{Path: filepath.Join(KubeDir, KubeCA), Data: set.CACert, Mode: 0o644},
		outdir.File{Path: filepath.Join(KubeDir, KubeadmFile), Data: kubeadm, Mode: 0o644},
		outdir.File{Path: filepath.Join(KubeDir, K3sFile), Data: k3s, Mode: 0o644})
	for _, f := range files {
		if f.Path != rel(dir.PKIFile(pki.CAKeyFile)) && pki.ContainsKey(f.Data, set.CAKey) {
			return nil, nil, fmt.Errorf("render: %s would hold the CA private key; refusing to write it", f.Path)
		}
		if f.Path != rel(dir.PKIFile(pki.ImageSigningKey)) && pki.ContainsKey(f.Data, set.SigningKey) {
			return nil, nil, fmt.Errorf("render: %s would hold the image-signing private key; refusing to write it", f.Path)
		}
	}
	return files, set, nil
}

// Endpoint maps a member to the host:port its client (or metrics) port is
// reached at from the operator's machine. nil means the member's own IP.
type Endpoint func(m spec.Member, port int) string

func hostPort(ep Endpoint, m spec.Member, port int) string {
	if ep != nil {
		return ep(m, port)
	}
	return m.IP + ":" + strconv.Itoa(port)
}

// clientURLs are the members' client URLs, as reached through ep.
func clientURLs(c *spec.Cluster, ep Endpoint) []string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, "https://"+hostPort(ep, m, layout.ClientPort))
	}
	return eps
}

// EtcdctlEnv is etcdctl.env: source it and etcdctl talks to the cluster
// with the admin certificate.
func EtcdctlEnv(c *spec.Cluster, dir outdir.Layout, ep Endpoint) []byte {
	eps := clientURLs(c, ep)
	var b bytes.Buffer
	b.WriteString("# Source this file to point etcdctl at the cluster with the admin certificate.\n")
	for _, kv := range [][2]string{
		{"ETCDCTL_API", "3"},
		{"ETCDCTL_ENDPOINTS", strings.Join(eps, ",")},
		{"ETCDCTL_CACERT", dir.PKIFile(pki.CACertFile)},
		{"ETCDCTL_CERT", dir.PKIFile(pki.AdminCert)},
		{"ETCDCTL_KEY", dir.PKIFile(pki.AdminKey)},
	} {
		fmt.Fprintf(&b, "export %s=%q\n", kv[0], kv[1])
	}
	return b.Bytes()
}

// NodeJob is the Prometheus job of the appliance's own metrics.
const NodeJob = "etcdimg"

// scrapeIntervalSeconds is prometheus.yml's scrape interval, the
// runbook's 10 s; the mixin's rate windows and the dashboard's
// $__rate_interval follow it.
const scrapeIntervalSeconds = 10

// Prometheus is prometheus.yml: the runbook's 10 s scrape of every
// member's plain-HTTP metrics port, one static target per member, and
// the same of the appliance's own metrics port (job NodeJob). With
// metrics.tls both are scraped over mTLS with the scraper's certificate
// in dir (an absolute path).
func Prometheus(c *spec.Cluster, ep Endpoint, dir outdir.Layout) ([]byte, error) {
	type staticConfig struct {
		Targets []string          `yaml:"targets"`
		Labels  map[string]string `yaml:"labels"`
	}
	type tlsConfig struct {
		CAFile   string `yaml:"ca_file"`
		CertFile string `yaml:"cert_file"`
		KeyFile  string `yaml:"key_file"`
	}
	type scrapeConfig struct {
		JobName       string         `yaml:"job_name"`
		Scheme        string         `yaml:"scheme,omitempty"`
		TLSConfig     *tlsConfig     `yaml:"tls_config,omitempty"`
		StaticConfigs []staticConfig `yaml:"static_configs"`
	}
	doc := struct {
		Global struct {
			ScrapeInterval string `yaml:"scrape_interval"`
		} `yaml:"global"`
		RuleFiles     []string       `yaml:"rule_files"`
		ScrapeConfigs []scrapeConfig `yaml:"scrape_configs"`
	}{RuleFiles: []string{RulesFile}}
	doc.Global.ScrapeInterval = strconv.Itoa(scrapeIntervalSeconds) + "s"
	// etcd's own metrics, and the appliance's (backups, certificates).
	for _, j := range []struct {
		name string
		port int
	}{{"etcd", layout.MetricsPort}, {NodeJob, layout.NodeMetricsPort}} {
		job := scrapeConfig{JobName: j.name}
		if c.Metrics.TLS {
			job.Scheme = "https"
			job.TLSConfig = &tlsConfig{CAFile: dir.PKIFile(pki.CACertFile), CertFile: dir.PKIFile(pki.PrometheusCert), KeyFile: dir.PKIFile(pki.PrometheusKey)}
		}
		for _, m := range c.Members {
			job.StaticConfigs = append(job.StaticConfigs, staticConfig{
				Targets: []string{hostPort(ep, m, j.port)},
				Labels:  map[string]string{"cluster": c.Name, "member": m.Name},
			})
		}
		doc.ScrapeConfigs = append(doc.ScrapeConfigs, job)
	}
	var b bytes.Buffer
	b.WriteString("# Prometheus scrape config for the etcd cluster " + c.Name + ", written by etcdimg.\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("render: encode prometheus.yml: %w", err)
	}
	enc.Close()
	return b.Bytes(), nil
}

// Exists reports whether path exists; errors other than absence count as
// existing, so that nothing is overwritten on a guess.
func Exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist)
}
