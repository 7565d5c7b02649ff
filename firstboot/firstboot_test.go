package firstboot

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"etcdimg/ignition/ign"
)

func TestParseEnvFile(t *testing.T) {
	got, err := ign.ParseEnvFile([]byte(`# comment
; also a comment
ETCD_NAME="etcd-1"
  SPACED = bare value
SINGLE='it''s'
ESCAPED="a \"q\" and \\ slash"
EMPTY=
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ETCD_NAME=etcd-1", "SPACED=bare value", "SINGLE=it''s", `ESCAPED=a "q" and \ slash`, "EMPTY="}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	for _, bad := range []string{"NOEQUALS\n", "1BAD=x\n", "K=\"open\n", `K="a"b"` + "\n"} {
		if _, err := ign.ParseEnvFile([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func parse(t *testing.T, raw string) ign.Config {
	t.Helper()
	cfg, err := ign.Parse([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestApplyWritesFilesWithModes(t *testing.T) {
	root := t.TempDir()
	cfg := parse(t, `{"ignition":{"version":"3.4.0"},
"storage":{"directories":[{"path":"/var/lib/etcd","mode":448}],
 "files":[{"path":"/etc/etcd/cert/k.pem","mode":384,"contents":{"source":"data:,secret"}},
          {"path":"/etc/hostname","contents":{"source":"data:,etcd-1%0A"}}],
 "links":[{"path":"/usr/bin/etcdctl","target":"/init"}]},
"systemd":{"units":[{"name":"etcd.service","enabled":true,"contents":"[Service]\nExecStart=/usr/bin/etcd\n"}]}}`)
	if err := Apply(cfg, root); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{"/var/lib/etcd": os.ModeDir | 0o700, "/etc/etcd/cert/k.pem": 0o600, "/etc/hostname": 0o644} {
		st, err := os.Stat(filepath.Join(root, path))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != want {
			t.Errorf("%s mode %v, want %v", path, st.Mode(), want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "/etc/hostname")); string(b) != "etcd-1\n" {
		t.Errorf("hostname %q", b)
	}
	if l, _ := os.Readlink(filepath.Join(root, "/usr/bin/etcdctl")); l != "/init" {
		t.Errorf("link -> %q", l)
	}
	if b, _ := os.ReadFile(filepath.Join(root, UnitDir, "etcd.service")); !strings.Contains(string(b), "ExecStart=/usr/bin/etcd") {
		t.Errorf("unit %q", b)
	}
}

// TestApplyRefusesWhatItCannotDo: nothing is written when any part of the
// config is unsupported.
func TestApplyRefusesWhatItCannotDo(t *testing.T) {
	file := `{"path":"/etc/a","contents":{"source":"data:,a"}}`
	for name, tc := range map[string]struct{ raw, want string }{
		"disks":       {`"storage":{"files":[` + file + `],"disks":[{"device":"/dev/vda","wipeTable":true}]}`, "storage.disks"},
		"filesystems": {`"storage":{"files":[` + file + `],"filesystems":[{"device":"/dev/vdb","format":"ext4","path":"/var"}]}`, "storage.filesystems"},
		"users":       {`"storage":{"files":[` + file + `]},"passwd":{"users":[{"name":"core"}]}`, "passwd"},
		"remote":      {`"storage":{"files":[` + file + `,{"path":"/etc/b","contents":{"source":"https://example.invalid/b"}}]}`, "not a data URL"},
		"owner":       {`"storage":{"files":[` + file + `,{"path":"/etc/b","user":{"name":"etcd"},"contents":{"source":"data:,b"}}]}`, "only root ownership"},
		"dropins":     {`"storage":{"files":[` + file + `]},"systemd":{"units":[{"name":"etcd.service","dropins":[{"name":"x.conf","contents":"[Service]"}]}]}`, "dropins"},
	} {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			err := Apply(parse(t, `{"ignition":{"version":"3.4.0"},`+tc.raw+`}`), root)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if entries, _ := os.ReadDir(root); len(entries) != 0 {
				t.Errorf("refused config wrote %v", entries)
			}
		})
	}
}
