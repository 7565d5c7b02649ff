package spec

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestDefaultIsTheRunbookPlan(t *testing.T) {
	c := Default(3)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := []Member{{"etcd-1", "192.168.2.51"}, {"etcd-2", "192.168.2.52"}, {"etcd-3", "192.168.2.53"}}
	for i, m := range want {
		if c.Members[i] != m {
			t.Errorf("member %d = %+v, want %+v", i, c.Members[i], m)
		}
	}
	if c.Etcd.HeartbeatInterval.D() != 100*time.Millisecond || c.Etcd.ElectionTimeout.D() != time.Second {
		t.Errorf("heartbeat/election = %s/%s, want 100ms/1s", c.Etcd.HeartbeatInterval, c.Etcd.ElectionTimeout)
	}
	if len(c.Warnings()) != 0 {
		t.Errorf("three members warn: %v", c.Warnings())
	}
	if w := Default(4).Warnings(); len(w) != 1 || !strings.Contains(w[0], "4 members tolerate 1 failed member(s), as 3 do") {
		t.Errorf("four members: warnings %v, want one about the even count", w)
	}
}

func TestMarshalParseRoundTrip(t *testing.T) {
	c := Default(5)
	c.PKI.KeyAlgorithm = KeyRSA2048
	c.Network.DNS = []string{"192.168.2.1"}
	b, err := Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(b, "etcdimg.yaml")
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	b2, _ := Marshal(back)
	if string(b) != string(b2) {
		t.Errorf("round trip changed the spec:\n%s\n---\n%s", b, b2)
	}
}

func TestParseFillsDefaults(t *testing.T) {
	c, err := Parse([]byte("members:\n  - {name: a, ip: 192.168.2.10}\n"), "f")
	if err != nil {
		t.Fatal(err)
	}
	d := Default(0)
	if c.Name != d.Name || c.Network.CIDR != d.Network.CIDR || c.Etcd != d.Etcd || c.PKI != d.PKI || c.Upgrade != d.Upgrade {
		t.Errorf("defaults not filled: %+v", c)
	}
	// A network section given without a gateway means no default route.
	c, err = Parse([]byte("members:\n  - {name: a, ip: 10.1.0.5}\nnetwork: {cidr: 10.1.0.0/16}\n"), "f")
	if err != nil {
		t.Fatal(err)
	}
	if c.Network.Gateway != "" {
		t.Errorf("gateway = %q, want none", c.Network.Gateway)
	}
}

func TestUnits(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{{"100ms", 100 * time.Millisecond}, {"87600h", 87600 * time.Hour}, {"3650d", 87600 * time.Hour}, {"1h30m", 90 * time.Minute}} {
		d, err := ParseDuration(tc.in)
		if err != nil || d.D() != tc.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tc.in, d, err, tc.want)
		}
	}
	for _, tc := range []struct {
		in   string
		want Size
	}{{"2GiB", 2 << 30}, {"512MiB", 512 << 20}, {"8GB", 8e9}, {"2147483648", 2 << 30}, {"1 KiB", 1024}} {
		s, err := ParseSize(tc.in)
		if err != nil || s != tc.want {
			t.Errorf("ParseSize(%q) = %v, %v; want %v", tc.in, s, err, tc.want)
		}
	}
	for _, bad := range []string{"", "2XB", "GiB", "-1", "99999999999TiB"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

// TestBadSpecsAreRefused checks that each bad input gets a one-line error
// that names the field.
func TestBadSpecsAreRefused(t *testing.T) {
	three := "members:\n  - {name: etcd-1, ip: 192.168.2.51}\n  - {name: etcd-2, ip: 192.168.2.52}\n  - {name: etcd-3, ip: 192.168.2.53}\n"
	many := "members:\n"
	for i := 1; i <= 10; i++ {
		many += "  - {name: m" + string(rune('0'+i%10)) + string(rune('a'+i)) + ", ip: 192.168.2." + string(rune('0'+i%10)) + "0}\n"
	}
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"empty file", "", "is empty"},
		{"syntax", "members: [", "fix the YAML syntax"},
		{"no members", "members: []\n", "members is empty"},
		{"too many", many, "more than 9"},
		{"duplicate name", "members:\n  - {name: a, ip: 192.168.2.51}\n  - {name: a, ip: 192.168.2.52}\n", `members[1].name "a" is also members[0].name`},
		{"duplicate ip", "members:\n  - {name: a, ip: 192.168.2.51}\n  - {name: b, ip: 192.168.2.51}\n", "members[1].ip 192.168.2.51 is also members[0].ip"},
		{"ip outside cidr", "members:\n  - {name: a, ip: 10.0.0.9}\n", "members[0].ip 10.0.0.9 is outside network.cidr 192.168.2.0/24"},
		{"ip not an ip", "members:\n  - {name: a, ip: 192.168.2.300}\n", "members[0].ip \"192.168.2.300\" is not an IPv4 address"},
		{"broadcast ip", "members:\n  - {name: a, ip: 192.168.2.255}\n", "broadcast"},
		{"gateway ip", "members:\n  - {name: a, ip: 192.168.2.1}\n", "is network.gateway"},
		{"member called root", "members:\n  - {name: root, ip: 192.168.2.51}\n", `members[0].name "root" is the admin certificate's CN`},
		{"member called prometheus", "members:\n  - {name: prometheus, ip: 192.168.2.51}\n", `members[0].name "prometheus" is the metrics scraper certificate's CN`},
		{"member called kube-apiserver-etcd-client", "members:\n  - {name: kube-apiserver-etcd-client, ip: 192.168.2.51}\n", "is the Kubernetes API server certificate's CN"},
		{"metrics.tls not a bool", "members:\n  - {name: a, ip: 192.168.2.51}\nmetrics: {tls: maybe}\n", "metrics.tls"},
		{"maintenance checked too often", "members:\n  - {name: a, ip: 192.168.2.51}\nmaintenance: {check: 5s}\n", "maintenance.check 5s: write 0 (off) or a whole number of seconds from 10s"},
		{"maintenance check negative", "members:\n  - {name: a, ip: 192.168.2.51}\nmaintenance: {check: -1m}\n", "maintenance.check -1m"},
		{"defrag never", "members:\n  - {name: a, ip: 192.168.2.51}\nmaintenance: {defragFreePercent: 0}\n", "maintenance.defragFreePercent 0: write a share of the quota from 1 to 90"},
		{"defrag past the disarm limit", "members:\n  - {name: a, ip: 192.168.2.51}\nmaintenance: {defragFreePercent: 95}\n", "maintenance.defragFreePercent 95"},
		{"auto compaction under a minute", "members:\n  - {name: a, ip: 192.168.2.51}\netcd: {autoCompactionRetention: 30s}\n", "etcd.autoCompactionRetention 30s"},
		{"uppercase name", "members:\n  - {name: Etcd1, ip: 192.168.2.51}\n", `members[0].name "Etcd1" is not a valid member name`},
		{"name with dot", "members:\n  - {name: a.b, ip: 192.168.2.51}\n", "members[0].name"},
		{"name too long", "members:\n  - {name: " + strings.Repeat("a", 64) + ", ip: 192.168.2.51}\n", "members[0].name"},
		{"bad cluster name", three + "name: my_cluster\n", `name "my_cluster"`},
		{"election under 5x heartbeat", three + "etcd: {heartbeatInterval: 100ms, electionTimeout: 400ms}\n", "etcd.electionTimeout 400ms is under 5 × etcd.heartbeatInterval (100ms); raise it to at least 500ms"},
		{"unparsable duration", three + "etcd: {heartbeatInterval: fast}\n", `etcd.heartbeatInterval: "fast" is not a duration`},
		{"unparsable size", three + "etcd: {backendQuota: 2 gigs}\n", `etcd.backendQuota: "2 gigs" is not a size`},
		{"snapshot count not a number", three + "etcd: {snapshotCount: lots}\n", `etcd.snapshotCount: "lots" is not a valid whole number`},
		{"unknown top field", three + "nodes: 3\n", "unknown field nodes (line 5)"},
		{"unknown member field", "members:\n  - {name: a, ip: 192.168.2.51, role: leader}\n", "unknown field members[0].role"},
		{"unknown nested field", three + "pki:\n  keyAlgo: rsa\n", "unknown field pki.keyAlgo"},
		{"bad tls version", three + "pki: {tlsMinVersion: \"1.1\"}\n", `pki.tlsMinVersion "1.1" is not supported`},
		{"bad key algorithm", three + "pki: {keyAlgorithm: dsa}\n", `pki.keyAlgorithm "dsa" is not supported`},
		{"cert outlives ca", three + "pki: {caLifetime: 8760h, certLifetime: 87600h}\n", "pki.certLifetime 87600h is longer than pki.caLifetime 8760h"},
		{"cidr with host bits", "members:\n  - {name: a, ip: 10.0.0.9}\nnetwork: {cidr: 10.0.0.7/24}\n", "network.cidr 10.0.0.7/24 has host bits set"},
		{"gateway outside", "members:\n  - {name: a, ip: 10.0.0.9}\nnetwork: {cidr: 10.0.0.0/24, gateway: 10.0.1.1}\n", "network.gateway 10.0.1.1 is outside"},
		{"bad dns", three + "network: {cidr: 192.168.2.0/24, dns: [resolver]}\n", `network.dns[0] "resolver"`},
		{"gateway is the network address", "members:\n  - {name: a, ip: 10.0.0.9}\nnetwork: {cidr: 10.0.0.0/24, gateway: 10.0.0.0}\n", "network.gateway 10.0.0.0 is the network or broadcast address"},
		{"gateway is the broadcast address", "members:\n  - {name: a, ip: 10.0.0.9}\nnetwork: {cidr: 10.0.0.0/24, gateway: 10.0.0.255}\n", "network.gateway 10.0.0.255 is the network or broadcast address"},
		{"dns unspecified", three + "network: {cidr: 192.168.2.0/24, dns: [0.0.0.0]}\n", "network.dns[0] 0.0.0.0 is not a server's address"},
		{"dns broadcast", three + "network: {cidr: 192.168.2.0/24, dns: [1.1.1.1, 255.255.255.255]}\n", "network.dns[1] 255.255.255.255 is not a server's address"},
		{"snapshot count huge", three + "etcd: {snapshotCount: 18446744073709551615}\n", "etcd.snapshotCount 18446744073709551615 is over 10000000"},
		{"days overflow", three + "pki: {caLifetime: 217154d}\n", `"217154d" is too long: at most 106751d`},
		{"second document", three + "---\nmembers: []\n", "holds more than one YAML document"},
		{"too large", three + "# " + strings.Repeat("x", MaxSpecBytes) + "\n", "is over 1024 KiB"},
		{"bad ntp", three + "network: {cidr: 192.168.2.0/24, ntp: [pool.ntp]}\n", `network.ntp[0] "pool.ntp" is not an IPv4 address`},
		{"zero backup retain", three + "backup: {retain: 0}\n", "backup.retain 0"},
		{"max age under interval", three + "backup: {interval: 1h, maxAge: 30m}\n", "backup.maxAge 30m is shorter"},
		{"s3 endpoint not a URL", three + "backup:\n  s3: {endpoint: s3.example.net, bucket: etcd, credentialsFile: c}\n", `backup.s3.endpoint "s3.example.net"`},
		{"s3 bad bucket", three + "backup:\n  s3: {endpoint: https://s3.example.net, bucket: Etcd_Backups, credentialsFile: c}\n", `backup.s3.bucket "Etcd_Backups"`},
		{"s3 no credentials", three + "backup:\n  s3: {endpoint: https://s3.example.net, bucket: etcd}\n", "backup.s3.credentialsFile is empty"},
		{"s3 unknown field", three + "backup:\n  s3: {endpoint: https://s3.example.net, bucket: etcd, secret: x}\n", "unknown field backup.s3.secret"},
		{"quota too small", three + "etcd: {backendQuota: 1MiB}\n", "etcd.backendQuota 1MiB is under 16MiB"},
		// Durations are quoted as written, not re-rendered (issue 21).
		{"negative max age", three + "backup: {maxAge: -5h}\n", "backup.maxAge -5h is negative"},
		{"max age in seconds", three + "backup: {interval: 1h, maxAge: 1800s}\n", "backup.maxAge 1800s is shorter than backup.interval 1h"},
		{"election in fractions", three + "etcd: {heartbeatInterval: 0.1s, electionTimeout: 0.4s}\n", "etcd.electionTimeout 0.4s is under 5 × etcd.heartbeatInterval (0.1s); raise it to at least 500ms"},
		{"interval in days", three + "backup: {interval: 1d, maxAge: 2h}\n", "backup.maxAge 2h is shorter than backup.interval 1d"},
		{"s3 endpoint with a query", three + "backup:\n  s3: {endpoint: \"https://s3.example.net?region=x\", bucket: etcd, credentialsFile: c}\n", "backup.s3.endpoint"},
		{"s3 endpoint with a fragment", three + "backup:\n  s3: {endpoint: \"https://s3.example.net#x\", bucket: etcd, credentialsFile: c}\n", "backup.s3.endpoint"},
		{"s3 endpoint with a user", three + "backup:\n  s3: {endpoint: \"https://AKIAEXAMPLE@s3.example.net\", bucket: etcd, credentialsFile: c}\n", "backup.s3.endpoint holds a user name or password"},
		{"good after zero", three + "upgrade: {goodAfter: 0s}\n", "upgrade.goodAfter 0s must be positive"},
		{"good after negative", three + "upgrade: {goodAfter: -30s}\n", "upgrade.goodAfter -30s must be positive"},
		{"trial timeout zero", three + "upgrade: {trialTimeout: 0m}\n", "upgrade.trialTimeout 0m must be positive"},
		{"trial timeout negative", three + "upgrade: {goodAfter: 1s, trialTimeout: -1h}\n", "upgrade.trialTimeout -1h must be positive"},
		{"good after equals trial timeout", three + "upgrade: {goodAfter: 10m, trialTimeout: 600s}\n", "upgrade.goodAfter 10m is not shorter than upgrade.trialTimeout 600s"},
		{"good after over the default trial timeout", three + "upgrade: {goodAfter: 1h}\n", "upgrade.goodAfter 1h is not shorter than upgrade.trialTimeout 10m"},
		{"zero tries", three + "upgrade: {tries: 0}\n", "upgrade.tries 0 is out of range"},
		{"ten tries", three + "upgrade: {tries: 10}\n", "upgrade.tries 10 is out of range; write how many times a new image is booted before falling back, 1 to 9"},
		{"tries not a number", three + "upgrade: {tries: many}\n", `upgrade.tries: "many" is not a valid whole number`},
		{"unparsable good after", three + "upgrade: {goodAfter: soon}\n", `upgrade.goodAfter: "soon" is not a duration`},
		{"unknown upgrade field", three + "upgrade: {retries: 3}\n", "unknown field upgrade.retries"},
		{"s3 endpoint with a password", three + "backup:\n  s3: {endpoint: \"https://AKIAEXAMPLE:wJalrXUtnFEMI@s3.example.net\", bucket: etcd, credentialsFile: c}\n", "put the keys in backup.s3.credentialsFile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), "etcdimg.yaml")
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.yaml)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not contain %q", msg, tc.want)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error is more than one line: %q", msg)
			}
			if !strings.HasPrefix(msg, "spec: ") {
				t.Errorf("error %q does not start with spec:", msg)
			}
			for _, secret := range []string{"AKIAEXAMPLE", "wJalrXUtnFEMI"} {
				if strings.Contains(msg, secret) {
					t.Errorf("error %q repeats a credential", msg)
				}
			}
		})
	}
}

// TestUpgradeSettings: upgrade's fields parse as written, the rest keep
// their defaults (30s, 10m, 3), and the bounds are inclusive.
func TestUpgradeSettings(t *testing.T) {
	members := "members:\n  - {name: a, ip: 192.168.2.51}\n"
	for _, tc := range []struct {
		name, yaml string
		want       Upgrade
	}{
		{"defaults", "", Upgrade{Duration(30 * time.Second), Duration(10 * time.Minute), 3}},
		{"all written", "upgrade: {goodAfter: 2m, trialTimeout: 1h, tries: 5}\n", Upgrade{Duration(2 * time.Minute), Duration(time.Hour), 5}},
		{"one written", "upgrade: {tries: 1}\n", Upgrade{Duration(30 * time.Second), Duration(10 * time.Minute), 1}},
		{"most tries", "upgrade: {tries: 9}\n", Upgrade{Duration(30 * time.Second), Duration(10 * time.Minute), 9}},
		{"just under the timeout", "upgrade: {goodAfter: 599s}\n", Upgrade{Duration(599 * time.Second), Duration(10 * time.Minute), 3}},
		{"in days", "upgrade: {trialTimeout: 1d}\n", Upgrade{Duration(30 * time.Second), Duration(24 * time.Hour), 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(members+tc.yaml), "f")
			if err != nil {
				t.Fatal(err)
			}
			if c.Upgrade != tc.want {
				t.Errorf("upgrade = %+v, want %+v", c.Upgrade, tc.want)
			}
		})
	}
	if d := Default(3).Upgrade; d.GoodAfter.D() != 30*time.Second || d.TrialTimeout.D() != 10*time.Minute || d.Tries != 3 {
		t.Errorf("default upgrade = %+v, want 30s, 10m, 3", d)
	}
}

func TestLoopbackMembersAreValid(t *testing.T) {
	c, err := Parse([]byte("members:\n  - {name: a, ip: 127.0.0.51}\n  - {name: b, ip: 127.0.0.52}\n  - {name: c, ip: 127.0.0.53}\nnetwork: {cidr: 127.0.0.0/8}\n"), "f")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Members) != 3 {
		t.Fatalf("members = %d", len(c.Members))
	}
}

// TestReadFileRefusesWhatIsNotAFile: --config naming a FIFO (or a
// device) is refused at once; opening a FIFO would wait for a writer
// for ever (issue 21).
func TestReadFileRefusesWhatIsNotAFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	regular := filepath.Join(dir, "etcdimg.yaml")
	if err := os.WriteFile(regular, []byte("members: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path, want string
	}{
		{"fifo", fifo, "is not a regular file"},
		{"directory", dir, "is not a regular file"},
		{"device", "/dev/zero", "is not a regular file"},
		{"regular", regular, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() { _, err := ReadFile(tc.path); done <- err }()
			select {
			case err := <-done:
				if tc.want == "" && err != nil {
					t.Fatalf("ReadFile(%s): %v", tc.path, err)
				}
				if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
					t.Fatalf("ReadFile(%s) = %v, want an error with %q", tc.path, err, tc.want)
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("ReadFile(%s) did not return", tc.path)
			}
		})
	}
}

// TestRelativeFilesAreBesideTheSpec: the files a spec names by a relative
// path are found beside the spec, wherever etcdimg runs (issue 21).
func TestRelativeFilesAreBesideTheSpec(t *testing.T) {
	for _, tc := range []struct {
		name          string
		creds, ca     string
		base          string
		wantC, wantCA string
	}{
		{"relative", "s3.env", "ca/s3.pem", "/home/op/cluster", "/home/op/cluster/s3.env", "/home/op/cluster/ca/s3.pem"},
		{"dot relative", "./s3.env", "", "conf", "conf/s3.env", ""},
		{"absolute", "/etc/s3.env", "/etc/ca.pem", "/home/op", "/etc/s3.env", "/etc/ca.pem"},
		{"parent", "../keys/s3.env", "", "/home/op/cluster", "/home/op/keys/s3.env", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default(3)
			c.Backup.S3 = &S3{Endpoint: "https://s3.example.net", Bucket: "etcd", CredentialsFile: tc.creds, CAFile: tc.ca}
			c.ResolveFiles(tc.base)
			if c.Backup.S3.CredentialsFile != tc.wantC || c.Backup.S3.CAFile != tc.wantCA {
				t.Errorf("resolved to %q, %q; want %q, %q", c.Backup.S3.CredentialsFile, c.Backup.S3.CAFile, tc.wantC, tc.wantCA)
			}
		})
	}
	c := Default(1)
	c.ResolveFiles("/x") // no backup.s3: nothing to do
}

// TestDurationStringsRoundTrip: a duration etcdimg writes back (and
// quotes in errors) parses to the same value, negative ones too.
func TestDurationStringsRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{-5 * time.Hour, "-5h"}, {-100 * time.Millisecond, "-100ms"}, {100 * time.Millisecond, "100ms"},
		{90 * time.Minute, "90m"}, {87600 * time.Hour, "87600h"}, {45 * time.Second, "45s"}, {0, "0s"},
		{1500 * time.Microsecond, "1.5ms"},
	} {
		got := Duration(tc.d).String()
		if got != tc.want {
			t.Errorf("Duration(%v) = %q, want %q", tc.d, got, tc.want)
		}
		if back, err := ParseDuration(got); err != nil || back.D() != tc.d {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", got, back, err, tc.d)
		}
	}
}

// TestClientNamesAvoidMembersAndReservedNames: a client's name is its
// etcd user; a member's name, root, the API server's and the scraper's
// would give it another's rights (the other way, a member named like a
// client, render refuses).
func TestClientNamesAvoidMembersAndReservedNames(t *testing.T) {
	c := Default(3)
	for _, tc := range []struct{ name, want string }{
		{"app", ""},
		{"etcd-2", "is a member's name"},
		{ReservedCN, "the admin certificate's CN"},
		{KubeAPIServerCN, "the Kubernetes API server certificate's CN"},
		{PrometheusCN, "the metrics scraper certificate's CN"},
		{"App", "use 1-63 lowercase letters"},
	} {
		err := c.ValidClientName(tc.name)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("ValidClientName(%q) = %v, want %q", tc.name, err, tc.want)
		}
	}
}
