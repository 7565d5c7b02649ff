package ign

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"etcdimg/internal/layout"
)

// writeRoot writes etcd.conf (unless conf is "-") and, when over is not
// empty, firstboot's runtime overrides under a new root.
func writeRoot(t *testing.T, conf, over string) string {
	t.Helper()
	root := t.TempDir()
	write := func(path, data string) {
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if conf != "-" {
		write(EtcdConfPath, conf)
	}
	if over != "" {
		write(layout.RuntimeEnvPath, over)
	}
	return root
}

const threeConf = `# etcd.conf
ETCD_NAME=etcd-1
ETCD_INITIAL_CLUSTER_TOKEN=prod
ETCD_INITIAL_ADVERTISE_PEER_URLS=https://10.0.0.1:2380
ETCD_INITIAL_CLUSTER="etcd-1=https://10.0.0.1:2380,etcd-2=https://10.0.0.2:2380,etcd-3=https://[fd00::3]:2380"
ETCD_QUOTA_BACKEND_BYTES=8589934592
`

// oldSlot is m with the slot settings a config built before they were
// written is read with: 30s, 10m, 3 tries.
func oldSlot(m Member) Member {
	m.SlotGoodAfter, m.SlotTrialTimeout, m.SlotTries = 30*time.Second, 10*time.Minute, 3
	return m
}

// TestReadRunningMember: the identity from etcd.conf, with firstboot's
// runtime overrides applied where they exist, and the slot settings or
// their defaults.
func TestReadRunningMember(t *testing.T) {
	peers := []Peer{
		{Name: "etcd-2", PeerURL: "https://10.0.0.2:2380", ClientURL: "https://10.0.0.2:2379"},
		{Name: "etcd-3", PeerURL: "https://[fd00::3]:2380", ClientURL: "https://[fd00::3]:2379"},
	}
	for _, tc := range []struct {
		name, conf, over string
		want             Member // Env is not compared
	}{
		{
			name: "spec's first cluster",
			conf: threeConf,
			want: oldSlot(Member{Name: "etcd-1", Token: "prod", PeerURL: "https://10.0.0.1:2380", IP: "10.0.0.1",
				InitialCluster: "etcd-1=https://10.0.0.1:2380,etcd-2=https://10.0.0.2:2380,etcd-3=https://[fd00::3]:2380",
				Peers:          peers, Names: []string{"etcd-1", "etcd-2", "etcd-3"}, Quota: 8589934592}),
		},
		{
			name: "peer CNs and a recorded cluster ID",
			conf: threeConf + "ETCD_PEER_CERT_ALLOWED_CN=etcd-1,etcd-2,etcd-3,etcd-4\n" + ClusterIDVar + "=1c4a3b2f00d5e6a7\n",
			want: oldSlot(Member{Name: "etcd-1", Token: "prod", PeerURL: "https://10.0.0.1:2380", IP: "10.0.0.1",
				InitialCluster: "etcd-1=https://10.0.0.1:2380,etcd-2=https://10.0.0.2:2380,etcd-3=https://[fd00::3]:2380",
				Peers:          peers, Names: []string{"etcd-1", "etcd-2", "etcd-3", "etcd-4"},
				ClusterIDVar: "1c4a3b2f00d5e6a7", ClusterID: 0x1c4a3b2f00d5e6a7, Quota: 8589934592}),
		},
		{
			name: "runtime overrides win",
			conf: threeConf,
			over: "ETCD_INITIAL_CLUSTER_STATE=existing\nETCD_INITIAL_CLUSTER=etcd-1=https://10.0.0.1:2380,etcd-2=https://10.0.0.2:2380\nETCD_QUOTA_BACKEND_BYTES=1073741824\n",
			want: oldSlot(Member{Name: "etcd-1", Token: "prod", PeerURL: "https://10.0.0.1:2380", IP: "10.0.0.1",
				InitialCluster: "etcd-1=https://10.0.0.1:2380,etcd-2=https://10.0.0.2:2380",
				Peers:          peers[:1], Names: []string{"etcd-1", "etcd-2"}, Quota: 1073741824}),
		},
		{
			name: "a malformed override file is ignored",
			conf: threeConf,
			over: "ETCD_QUOTA_BACKEND_BYTES=1\nnot a variable\n",
			want: oldSlot(Member{Name: "etcd-1", Token: "prod", PeerURL: "https://10.0.0.1:2380", IP: "10.0.0.1",
				InitialCluster: "etcd-1=https://10.0.0.1:2380,etcd-2=https://10.0.0.2:2380,etcd-3=https://[fd00::3]:2380",
				Peers:          peers, Names: []string{"etcd-1", "etcd-2", "etcd-3"}, Quota: 8589934592}),
		},
		{
			name: "a lone member, no quota",
			conf: "ETCD_NAME=solo\nETCD_INITIAL_CLUSTER_TOKEN=t\nETCD_INITIAL_ADVERTISE_PEER_URLS=https://192.168.1.5:2380\nETCD_INITIAL_CLUSTER=solo=https://192.168.1.5:2380\nETCD_QUOTA_BACKEND_BYTES=lots\n",
			want: oldSlot(Member{Name: "solo", Token: "t", PeerURL: "https://192.168.1.5:2380", IP: "192.168.1.5",
				InitialCluster: "solo=https://192.168.1.5:2380", Names: []string{"solo"}}),
		},
		{
			name: "slot settings written",
			conf: threeConf + SlotGoodAfterVar + `="1m30s"` + "\n" + SlotTrialTimeoutVar + `="1h0m0s"` + "\n" + SlotTriesVar + `="9"` + "\n",
			want: Member{Name: "etcd-1", Token: "prod", PeerURL: "https://10.0.0.1:2380", IP: "10.0.0.1",
				InitialCluster: "etcd-1=https://10.0.0.1:2380,etcd-2=https://10.0.0.2:2380,etcd-3=https://[fd00::3]:2380",
				Peers:          peers, Names: []string{"etcd-1", "etcd-2", "etcd-3"}, Quota: 8589934592,
				SlotGoodAfter: 90 * time.Second, SlotTrialTimeout: time.Hour, SlotTries: 9},
		},
		{
			name: "one slot setting written, the others default",
			conf: threeConf + SlotTriesVar + "=1\n",
			want: Member{Name: "etcd-1", Token: "prod", PeerURL: "https://10.0.0.1:2380", IP: "10.0.0.1",
				InitialCluster: "etcd-1=https://10.0.0.1:2380,etcd-2=https://10.0.0.2:2380,etcd-3=https://[fd00::3]:2380",
				Peers:          peers, Names: []string{"etcd-1", "etcd-2", "etcd-3"}, Quota: 8589934592,
				SlotGoodAfter: 30 * time.Second, SlotTrialTimeout: 10 * time.Minute, SlotTries: 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ReadRunningMember(writeRoot(t, tc.conf, tc.over))
			if err != nil {
				t.Fatal(err)
			}
			if m.Env["ETCD_NAME"] != tc.want.Name {
				t.Errorf("Env[ETCD_NAME] %q, want %q", m.Env["ETCD_NAME"], tc.want.Name)
			}
			got := *m
			got.Env = nil
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestReadRunningMemberHasTheOverridesAndReadMemberNot: the backup
// service sees what etcd sees, etcd.conf with the runtime file over it;
// the identity firstboot decides by is etcd.conf alone, so that a join's
// written initial cluster or a lowered quota never moves the cluster the
// member may join.
func TestReadRunningMemberHasTheOverridesAndReadMemberNot(t *testing.T) {
	root := writeRoot(t, threeConf+"ETCD_CERT_FILE=/etc/etcd/cert/etcd.pem\n",
		"ETCD_INITIAL_CLUSTER_STATE=existing\nETCD_INITIAL_CLUSTER=member-abc=https://10.0.0.9:2380\nETCD_QUOTA_BACKEND_BYTES=67108864\n")
	m, err := ReadRunningMember(root)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"ETCD_CERT_FILE": "/etc/etcd/cert/etcd.pem", "ETCD_INITIAL_CLUSTER_STATE": "existing", "ETCD_INITIAL_CLUSTER_TOKEN": "prod"} {
		if m.Env[k] != want {
			t.Errorf("running: Env[%s] %q, want %q", k, m.Env[k], want)
		}
	}
	if m.Quota != 67108864 {
		t.Errorf("running: quota %d, want the lowered 67108864", m.Quota)
	}
	spec, err := ReadMember(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := spec.Env["ETCD_INITIAL_CLUSTER_STATE"]; ok || spec.InitialCluster == m.InitialCluster || len(spec.Peers) != 2 || spec.Quota == 67108864 {
		t.Errorf("ReadMember took the runtime overrides: initial cluster %q, peers %v, quota %d", spec.InitialCluster, spec.Peers, spec.Quota)
	}
}

// TestReadMemberRefuses: what is not an identity is an error, with the
// texts firstboot and the backup service have always printed.
func TestReadMemberRefuses(t *testing.T) {
	lacks := EtcdConfPath + " lacks ETCD_NAME, ETCD_INITIAL_CLUSTER_TOKEN or ETCD_INITIAL_ADVERTISE_PEER_URLS"
	for _, tc := range []struct {
		name, conf, want string
	}{
		{"no etcd.conf", "-", "no such file or directory"},
		{"not an environment file", "ETCD_NAME etcd-1\n", EtcdConfPath + ": line 1 has no '='"},
		{"no name", strings.Replace(threeConf, "ETCD_NAME=etcd-1\n", "", 1), lacks},
		{"no token", strings.Replace(threeConf, "ETCD_INITIAL_CLUSTER_TOKEN=prod\n", "", 1), lacks},
		{"no peer URL", strings.Replace(threeConf, "ETCD_INITIAL_ADVERTISE_PEER_URLS=https://10.0.0.1:2380\n", "", 1), lacks},
		{"bad peer URL", strings.Replace(threeConf, "https://10.0.0.1:2380\n", "https://[10.0.0.1:2380\n", 1), "ETCD_INITIAL_ADVERTISE_PEER_URLS: "},
		{"cluster ID not hex", threeConf + ClusterIDVar + "=xyz\n", EtcdConfPath + `: ETCDIMG_CLUSTER_ID="xyz" is not a cluster ID; rebuild the image with ` + "`etcdimg build`"},
		{"cluster ID zero", threeConf + ClusterIDVar + "=0\n", `ETCDIMG_CLUSTER_ID="0" is not a cluster ID`},
		{"good-after not a duration", threeConf + SlotGoodAfterVar + "=soon\n", EtcdConfPath + `: ETCDIMG_SLOT_GOOD_AFTER="soon" is not a positive duration; rebuild the image with ` + "`etcdimg build`"},
		{"good-after zero", threeConf + SlotGoodAfterVar + "=0s\n", `ETCDIMG_SLOT_GOOD_AFTER="0s" is not a positive duration`},
		{"trial timeout negative", threeConf + SlotTrialTimeoutVar + "=-10m\n", `ETCDIMG_SLOT_TRIAL_TIMEOUT="-10m" is not a positive duration`},
		{"trial timeout empty", threeConf + SlotTrialTimeoutVar + "=\n", `ETCDIMG_SLOT_TRIAL_TIMEOUT="" is not a positive duration`},
		{"tries zero", threeConf + SlotTriesVar + "=0\n", `ETCDIMG_SLOT_TRIES="0" is not a count of 1 to 9`},
		{"tries ten", threeConf + SlotTriesVar + "=10\n", `ETCDIMG_SLOT_TRIES="10" is not a count of 1 to 9`},
		{"tries not a number", threeConf + SlotTriesVar + "=3x\n", `ETCDIMG_SLOT_TRIES="3x" is not a count`},
		{"good-after not under the timeout", threeConf + SlotGoodAfterVar + "=10m\n", "ETCDIMG_SLOT_GOOD_AFTER (10m0s) is not shorter than ETCDIMG_SLOT_TRIAL_TIMEOUT (10m0s)"},
		{"bad initial cluster", strings.Replace(threeConf, "etcd-2=https://10.0.0.2:2380", "etcd-2=https://[10.0.0.2:2380", 1), "ETCD_INITIAL_CLUSTER: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ReadMember(writeRoot(t, tc.conf, ""))
			if err == nil {
				t.Fatalf("read %+v, want an error with %q", m, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to contain %q", err, tc.want)
			}
			if tc.conf == "-" && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("error %v is not os.ErrNotExist", err)
			}
		})
	}
}

// TestMemberNames: the members' names are those the peer port allows,
// else the initial cluster's.
func TestMemberNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"peer CNs", map[string]string{"ETCD_PEER_CERT_ALLOWED_CN": "etcd-1,etcd-2,etcd-3", "ETCD_INITIAL_CLUSTER": "etcd-1=https://10.0.0.1:2380"}, []string{"etcd-1", "etcd-2", "etcd-3"}},
		{"initial cluster", map[string]string{"ETCD_INITIAL_CLUSTER": "etcd-1=https://10.0.0.1:2380,etcd-2=https://10.0.0.2:2380"}, []string{"etcd-1", "etcd-2"}},
		{"nothing", map[string]string{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := memberNames(tc.env); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("names %q, want %q", got, tc.want)
			}
		})
	}
}
