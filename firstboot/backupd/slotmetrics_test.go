package backupd

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"etcdimg/internal/slot"
)

// TestTheMetricsNameTheSlotAndARollback: etcdimg_image_info carries the
// running slot's ID, digest and state from PID 1's record, and
// etcdimg_slot_rolled_back says whether the member came back from an
// update whose tries were spent.
func TestTheMetricsNameTheSlotAndARollback(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		st   *slot.Status
		want []string
	}{
		{"no record", nil, nil},
		{"good", &slot.Status{Running: slot.SlotState{ID: "0123456789abcdef", Gen: 2, State: slot.StateGood, Digest: "d1", Manifest: &slot.Manifest{Etcd: "3.7.3", Kernel: "6.1"}}},
			[]string{`etcdimg_image_info{slot="0123456789abcdef",gen="2",digest="d1",state="good",etcd="3.7.3",kernel="6.1"} 1`, "etcdimg_slot_rolled_back 0"}},
		{"rolled back", &slot.Status{Running: slot.SlotState{ID: "0123456789abcdef", Gen: 1, State: slot.StateGood}, RolledBack: &slot.SlotState{ID: "fedcba9876543210", Gen: 2, State: slot.StateBad}},
			[]string{`etcdimg_slot_rolled_back{from="fedcba9876543210"} 1`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".json")
			if tc.st != nil {
				b, _ := json.Marshal(tc.st)
				os.WriteFile(path, b, 0o644)
			}
			var out strings.Builder
			writeSlotMetrics(&out, path)
			if tc.want == nil && out.Len() != 0 {
				t.Errorf("without a record: %s", out.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w+"\n") {
					t.Errorf("no %q in\n%s", w, out.String())
				}
			}
		})
	}
}
