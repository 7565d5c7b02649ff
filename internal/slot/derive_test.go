package slot

import (
	"testing"

	"etcdimg/internal/layout"
)

func TestDeriveUKIChangesTheSlotIDOnly(t *testing.T) {
	const a, b = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
	arg := func(id string) string { return layout.SlotArg + "=" + id }
	for _, tc := range []struct {
		name, uki, from, to, want string
	}{
		{"once", "MZ x " + arg(a) + " y", a, b, "MZ x " + arg(b) + " y"},
		{"absent", "MZ x " + arg(b), a, b, ""},
		{"twice", "MZ " + arg(a) + " " + arg(a), a, b, ""},
		{"an ID that is not one", "MZ " + arg(a), a, "../../x", ""},
		{"the bare ID without the argument", "MZ " + a, a, b, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := DeriveUKI([]byte(tc.uki), tc.from, tc.to)
			if string(got) != tc.want || (tc.want == "") != (got == nil) {
				t.Errorf("DeriveUKI(%q, %s, %s) = %q, want %q", tc.uki, tc.from, tc.to, got, tc.want)
			}
		})
	}
}
