package health

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"
)

// TestUnreachableMemberIsUnhealthy: a port nobody answers on is reported
// unhealthy with an error, and the table carries the runbook's columns.
// (Healthy members are checked end to end in e2e.)
func TestUnreachableMemberIsUnhealthy(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	rs := Check(context.Background(), []Endpoint{{Member: "etcd-9", URL: "https://" + addr}}, &tls.Config{}, 500*time.Millisecond)
	if len(rs) != 1 || rs[0].Healthy || rs[0].Err == "" || rs[0].Member != "etcd-9" {
		t.Fatalf("results %+v", rs)
	}
	if Healthy(rs) || Healthy(nil) {
		t.Error("Healthy is true without healthy members")
	}
	var b strings.Builder
	Table(&b, rs)
	for _, col := range []string{"ENDPOINT", "HEALTH", "TOOK", "ERROR", "https://" + addr, "false"} {
		if !strings.Contains(b.String(), col) {
			t.Errorf("table lacks %q:\n%s", col, b.String())
		}
	}
}
