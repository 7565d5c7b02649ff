package ignition

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"etcdimg/ignition/ign"
	"etcdimg/internal/layout"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// fixedCerts stand in for PEM material in golden files: the golden output
// must not change with every freshly generated key.
var fixedCerts = Certs{
	CA:   []byte("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"),
	Cert: []byte("-----BEGIN CERTIFICATE-----\nMEMBER\n-----END CERTIFICATE-----\n"),
	Key:  []byte("-----BEGIN EC PRIVATE KEY-----\nKEY\n-----END EC PRIVATE KEY-----\n"),
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from %s (run go test -update if intended):\n%s", name, path, got)
	}
}

func TestRenderGolden(t *testing.T) {
	c := spec.Default(3)
	c.Network.DNS = []string{"192.168.2.1"}
	cfg, err := Render(c, c.Members[0], fixedCerts, Options{})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "etcd-1.bu", cfg.Butane)
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, cfg.Ignition, "", "  "); err != nil {
		t.Fatal(err)
	}
	golden(t, "etcd-1.ign", pretty.Bytes())
}

// TestConfigDecodesToTheRunbookFiles proves the round trip: the config
// passes Ignition's validator and its files decode to exactly what the
// member needs.
func TestConfigDecodesToTheRunbookFiles(t *testing.T) {
	for _, alg := range []string{spec.KeyECDSAP256, spec.KeyRSA2048} {
		t.Run(alg, func(t *testing.T) {
			c := spec.Default(3)
			c.PKI.KeyAlgorithm = alg
			set, err := pki.Ensure(c, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range c.Members {
				certs := Certs{CA: set.CACert, Cert: set.Members[m.Name].Cert, Key: set.Members[m.Name].Key}
				cfg, err := Render(c, m, certs, Options{})
				if err != nil {
					t.Fatal(err)
				}
				if len(cfg.Ignition) > MaxConfigBytes {
					t.Errorf("%s: %d bytes", m.Name, len(cfg.Ignition))
				}
				parsed, err := ign.Parse(cfg.Ignition)
				if err != nil {
					t.Fatal(err)
				}
				if parsed.Ignition.Version != IgnitionSpec {
					t.Errorf("version %s", parsed.Ignition.Version)
				}
				for path, want := range map[string][]byte{
					ign.EtcdConfPath: EtcdConf(c, m, c.Name, 0),
					ign.HostnamePath: []byte(m.Name + "\n"),
					ign.HostsPath:    Hosts(c),
					ign.NetworkPath:  NetworkFile(c, m),
					ign.CACertPath:   set.CACert,
					ign.CertPath:     certs.Cert,
					ign.KeyPath:      certs.Key,
				} {
					got, err := ign.FileContents(parsed, path)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, want) {
						t.Errorf("%s %s:\n%s\nwant\n%s", m.Name, path, got, want)
					}
				}
				key, _ := ign.File(parsed, ign.KeyPath)
				if key.Mode == nil || *key.Mode != 0o600 {
					t.Errorf("%s: key mode %v", m.Name, key.Mode)
				}
				if u := parsed.Systemd.Units; len(u) != 2 || u[0].Name != ign.EtcdUnitName || !*u[0].Enabled || u[1].Name != layout.BackupUnitName || !*u[1].Enabled {
					t.Errorf("%s: units %+v", m.Name, u)
				}
				var bc ign.BackupConfig
				if b, err := ign.FileContents(parsed, layout.BackupConfigPath); err != nil || json.Unmarshal(b, &bc) != nil || bc.IntervalSeconds != 3600 || bc.Retain != 24 || bc.S3 != nil {
					t.Errorf("%s: backup config %+v (%v)", m.Name, bc, err)
				}
				for _, raw := range [][]byte{cfg.Ignition, cfg.Butane, decodedFiles(t, parsed)} {
					if pki.ContainsKey(raw, set.CAKey) {
						t.Errorf("%s: config holds the CA key", m.Name)
					}
					if pki.ContainsKey(raw, set.SigningKey) {
						t.Errorf("%s: config holds the image-signing key", m.Name)
					}
				}
				if !pki.ContainsKey(decodedFiles(t, parsed), certs.Key) {
					t.Errorf("%s: the key check cannot find the member's own key", m.Name)
				}
			}
		})
	}
}

func decodedFiles(t *testing.T, cfg ign.Config) []byte {
	var all []byte
	for _, f := range cfg.Storage.Files {
		b, err := ign.Contents(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return all
}

func TestEtcdConf(t *testing.T) {
	c := spec.Default(3)
	got := string(EtcdConf(c, c.Members[1], c.Name, 0))
	for _, line := range []string{
		`ETCD_NAME="etcd-2"`,
		`ETCD_DATA_DIR="/var/lib/etcdimg/etcd"`,
		`ETCD_HEARTBEAT_INTERVAL="100"`,
		`ETCD_ELECTION_TIMEOUT="1000"`,
		`ETCD_SNAPSHOT_COUNT="5000"`,
		`ETCD_QUOTA_BACKEND_BYTES="2147483648"`,
		`ETCD_LISTEN_PEER_URLS="https://192.168.2.52:2380"`,
		`ETCD_LISTEN_CLIENT_URLS="https://192.168.2.52:2379,https://127.0.0.1:2379"`,
		`ETCD_LISTEN_METRICS_URLS="http://192.168.2.52:2381,http://127.0.0.1:2381"`,
		`ETCD_INITIAL_CLUSTER="etcd-1=https://192.168.2.51:2380,etcd-2=https://192.168.2.52:2380,etcd-3=https://192.168.2.53:2380"`,
		`ETCD_INITIAL_CLUSTER_TOKEN="etcd-cluster-1"`,
		`ETCD_INITIAL_CLUSTER_STATE="new"`,
		`ETCD_CLIENT_CERT_AUTH="true"`,
		`ETCD_PEER_CLIENT_CERT_AUTH="true"`,
		`ETCD_PEER_TRUSTED_CA_FILE="/etc/etcd/cert/etcd-ca.pem"`,
		`ETCD_TLS_MIN_VERSION="TLS1.2"`,
		`ETCDIMG_SLOT_GOOD_AFTER="30s"`,
		`ETCDIMG_SLOT_TRIAL_TIMEOUT="10m0s"`,
		`ETCDIMG_SLOT_TRIES="3"`,
		`ETCD_CIPHER_SUITES="TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"`,
	} {
		if !strings.Contains(got, line+"\n") {
			t.Errorf("etcd.conf lacks %s:\n%s", line, got)
		}
	}
	// TLS 1.3 only: no suite list (etcd refuses one with TLS 1.3).
	c13 := spec.Default(3)
	c13.PKI.TLSMinVersion = "1.3"
	if got := string(EtcdConf(c13, c13.Members[0], c13.Name, 0)); !strings.Contains(got, `ETCD_TLS_MIN_VERSION="TLS1.3"`+"\n") || strings.Contains(got, "ETCD_CIPHER_SUITES") {
		t.Errorf("tlsMinVersion 1.3:\n%s", got)
	}
	// A loopback member does not also claim 127.0.0.1.
	c.Network.CIDR, c.Network.Gateway = "127.0.0.0/8", ""
	c.Members[0].IP = "127.0.0.51"
	if got := string(EtcdConf(c, c.Members[0], c.Name, 0)); !strings.Contains(got, `ETCD_LISTEN_CLIENT_URLS="https://127.0.0.51:2379"`+"\n") {
		t.Errorf("loopback member:\n%s", got)
	}
}

// TestSlotSettingsReachTheMember: the spec's upgrade section, rendered
// into etcd.conf, is what the member reads back; a config without the
// lines (built before them) reads as the spec's defaults.
func TestSlotSettingsReachTheMember(t *testing.T) {
	d := spec.Default(3).Upgrade
	if ign.DefaultSlotGoodAfter != d.GoodAfter.D() || ign.DefaultSlotTrialTimeout != d.TrialTimeout.D() || ign.DefaultSlotTries != d.Tries || ign.MaxSlotTries != spec.MaxUpgradeTries {
		t.Fatalf("ign's defaults %v, %v, %d (at most %d) are not the spec's %+v (at most %d)", ign.DefaultSlotGoodAfter, ign.DefaultSlotTrialTimeout, ign.DefaultSlotTries, ign.MaxSlotTries, d, spec.MaxUpgradeTries)
	}
	for _, tc := range []struct {
		name string
		up   spec.Upgrade
		drop bool // the slot lines removed, as in an old config
	}{
		{"defaults", d, false},
		{"written", spec.Upgrade{GoodAfter: spec.Duration(90 * time.Second), TrialTimeout: spec.Duration(36 * time.Hour), Tries: 9}, false},
		{"sub-second", spec.Upgrade{GoodAfter: spec.Duration(1500 * time.Millisecond), TrialTimeout: spec.Duration(2 * time.Second), Tries: 1}, false},
		{"built before them", spec.Upgrade{GoodAfter: spec.Duration(time.Minute), TrialTimeout: spec.Duration(time.Hour), Tries: 5}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := spec.Default(3)
			c.Upgrade = tc.up
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			conf := EtcdConf(c, c.Members[0], c.Name, 0x1c4a)
			want := tc.up
			if tc.drop {
				var kept []string
				for _, l := range strings.SplitAfter(string(conf), "\n") {
					if !strings.HasPrefix(l, "ETCDIMG_SLOT_") {
						kept = append(kept, l)
					}
				}
				conf, want = []byte(strings.Join(kept, "")), d
				if strings.Contains(string(conf), "SLOT") {
					t.Fatalf("slot lines left:\n%s", conf)
				}
			}
			root := t.TempDir()
			p := filepath.Join(root, ign.EtcdConfPath)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, conf, 0o644); err != nil {
				t.Fatal(err)
			}
			for name, read := range map[string]func(string) (*ign.Member, error){"ReadMember": ign.ReadMember, "ReadRunningMember": ign.ReadRunningMember} {
				m, err := read(root)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if m.SlotGoodAfter != want.GoodAfter.D() || m.SlotTrialTimeout != want.TrialTimeout.D() || m.SlotTries != want.Tries {
					t.Errorf("%s: %v, %v, %d; want %+v\n%s", name, m.SlotGoodAfter, m.SlotTrialTimeout, m.SlotTries, want, conf)
				}
			}
		})
	}
}

func TestParseRefusesBrokenConfigs(t *testing.T) {
	for name, raw := range map[string]string{
		"empty":        ``,
		"not json":     `{"ignition":`,
		"old version":  `{"ignition":{"version":"2.2.0"}}`,
		"bad mode":     `{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/x","mode":99999}]}}`,
		"relative":     `{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"etc/x"}]}}`,
		"unknown unit": `{"ignition":{"version":"3.4.0"},"systemd":{"units":[{"name":"etcd"}]}}`,
	} {
		if _, err := ign.Parse([]byte(raw)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
