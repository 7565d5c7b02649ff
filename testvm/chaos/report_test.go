package chaos

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"etcdimg/testvm/chaos/history"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// TestMeasure: a fault's recovery is from its start to the first write
// acknowledged after it, reads and unknown writes not counted; its
// availability is the share of requests made while it lasted that
// succeeded.
func TestMeasure(t *testing.T) {
	ops := []history.Op{
		{Kind: history.Put, Call: ms(900), Return: ms(950)},
		{Kind: history.Put, Call: ms(1000), Unknown: true},
		{Kind: history.Get, Call: ms(1100), Return: ms(1150)},
		{Kind: history.Get, Call: ms(1200), Failed: true},
		{Kind: history.CAS, Call: ms(2400), Return: ms(2500)},
		{Kind: history.Put, Call: ms(2600), Return: ms(2700)},
	}
	done := []Done{
		{Fault: Fault{Kind: Kill}, Began: ms(1000), Healed: ms(2000)},
		{Fault: Fault{Kind: PowerCut}, Began: ms(3000), Healed: ms(4000)},
	}
	Measure(done, ops)
	if done[0].RecoveredAfter != ms(1500) || done[0].Availability != 1.0/3 {
		t.Errorf("kill: recovered after %s, availability %v; want 1.5s, 1/3", done[0].RecoveredAfter, done[0].Availability)
	}
	if done[1].RecoveredAfter != -1 || done[1].Availability != 0 {
		t.Errorf("power cut with no request after it: %+v", done[1])
	}
}

// TestTwoLeaders: two members naming different leaders in one term is a
// violation; different terms, or a member that knows no leader, are not.
func TestTwoLeaders(t *testing.T) {
	ok := []Sample{{"etcd-1", 2, 0xa}, {"etcd-2", 2, 0xa}, {"etcd-3", 3, 0xb}, {"etcd-3", 4, 0xb}}
	if v := TwoLeaders(ok); len(v) != 0 {
		t.Errorf("violations in a sound sample: %q", v)
	}
	bad := append(ok, Sample{"etcd-3", 2, 0xb})
	if v := TwoLeaders(bad); len(v) != 1 || v[0] != "term 2: leaders a (seen by etcd-1, etcd-2) and b (seen by etcd-3)" {
		t.Errorf("violations %q", v)
	}
}

// TestPrint: the report names each fault, its recovery and the verdict.
func TestPrint(t *testing.T) {
	var b strings.Builder
	v := Verdict{Requests: 10, OK: 8, Failed: 1, Unknown: 1, Linearizable: true}
	Print(&b, v, []Done{{Fault: Fault{Kind: Kill, Variant: "leader"}, Target: "etcd-2", Began: ms(10000), Healed: ms(20000), RecoveredAfter: ms(1234), Availability: 0.5, CaughtUpAfter: ms(2500)},
		{Fault: Fault{Kind: Partition, Variant: "isolate"}, Target: "etcd-3", RecoveredAfter: -1, CaughtUpAfter: -1, Err: "not caught up within 3m0s"}})
	for _, want := range []string{"requests: 10 (8 ok, 1 failed, 1 of unknown outcome)", "kill leader", "etcd-2", "1.23s", "50 %", "2.5s", "never", "not caught up within 3m0s", "verdict: PASS"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
	v.Linearizable = false
	b.Reset()
	Print(&b, v, nil)
	if !strings.Contains(b.String(), "verdict: FAIL") {
		t.Errorf("a non-linearizable run passed:\n%s", b.String())
	}
}

// TestLeaderSamples reads raft's lines as etcd prints them on a console.
func TestLeaderSamples(t *testing.T) {
	console := []byte(`[   9.1] firstboot: start etcd.service: pid 90: /usr/bin/etcd (66ms)
etcd: {"level":"info","ts":"2026-11-28T14:32:27.2Z","logger":"raft","caller":"v3@v3.7.0/raft.go:970","msg":"1092e4cf02e4747f became leader at term 3"}
etcd: {"level":"info","ts":"2026-11-28T14:32:27.3Z","logger":"raft","caller":"v3@v3.7.0/node.go:370","msg":"raft.node: 1092e4cf02e4747f elected leader 1092e4cf02e4747f at term 3"}
etcd: {"level":"info","ts":"2026-11-28T14:33:01.0Z","logger":"raft","caller":"v3@v3.7.0/node.go:370","msg":"raft.node: 1092e4cf02e4747f elected leader 5202e6cf8a35b24d at term 4"}
`)
	got := LeaderSamples("etcd-1", console)
	want := []Sample{{"etcd-1", 3, 0x1092e4cf02e4747f}, {"etcd-1", 4, 0x5202e6cf8a35b24d}, {"etcd-1", 3, 0x1092e4cf02e4747f}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("samples %v, want %v", got, want)
	}
}
