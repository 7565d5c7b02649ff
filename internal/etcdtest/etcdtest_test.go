package etcdtest

import (
	"net"
	"net/url"
	"testing"

	"go.etcd.io/etcd/server/v3/embed"
)

// TestAPortTakenMeanwhileIsNotAFailure: a port another process took
// between FreeURL and etcd's bind (a parallel package's test) starts the
// member again on other ports instead of failing the test, as
// TestTheCheckCatchesASplitBrain once failed ("bind: address already in
// use").
func TestAPortTakenMeanwhileIsNotAFailure(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := url.URL{Scheme: "http", Host: l.Addr().String()}
	tries := 0
	_, u := Start(t, func(cfg *embed.Config) {
		if tries++; tries == 1 {
			cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{taken}, []url.URL{taken}
		}
	})
	if tries != 2 || u == taken.String() {
		t.Errorf("started at %s after %d tries; want a second try on another port than %s", u, tries, taken.String())
	}
}
