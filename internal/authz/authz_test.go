package authz

import (
	"context"
	"crypto/tls"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"etcdimg/internal/backup"
	"etcdimg/internal/etcdtest"
	"etcdimg/internal/spec"
	"etcdimg/pki"
)

// cluster is a real (embedded) one-member etcd with client certificate
// authentication, and the PKI that signed its certificates.
type cluster struct {
	url string
	dir string
	c   *spec.Cluster
}

func write(t *testing.T, path string, b []byte) string {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func start(t *testing.T) *cluster {
	t.Helper()
	c := spec.Default(1)
	c.Members[0].IP = "127.0.0.1"
	c.Network.CIDR, c.Network.Gateway = "127.0.0.0/8", ""
	dir := t.TempDir()
	set, err := pki.Ensure(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	ca := write(t, filepath.Join(dir, pki.CACertFile), set.CACert)
	write(t, filepath.Join(dir, pki.CAKeyFile), set.CAKey)
	write(t, filepath.Join(dir, pki.AdminCert), set.Admin.Cert)
	write(t, filepath.Join(dir, pki.AdminKey), set.Admin.Key)
	cert := write(t, filepath.Join(dir, "etcd-1.pem"), set.Members["etcd-1"].Cert)
	key := write(t, filepath.Join(dir, "etcd-1-key.pem"), set.Members["etcd-1"].Key)

	_, u := etcdtest.Start(t, func(cfg *embed.Config) {
		cfg.Name = "etcd-1"
		cu := etcdtest.FreeURL(t, "https")
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: cert, KeyFile: key, TrustedCAFile: ca, ClientCertAuth: true}
		cfg.InitialCluster = cfg.Name + "=" + cfg.AdvertisePeerUrls[0].String()
	})
	return &cluster{url: u, dir: dir, c: c}
}

// as opens a client with the given certificate and key.
func (k *cluster) as(t *testing.T, cert, key []byte) *clientv3.Client {
	t.Helper()
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := transport.TLSInfo{TrustedCAFile: filepath.Join(k.dir, pki.CACertFile)}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	tc.Certificates = []tls.Certificate{pair}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{k.url}, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func (k *cluster) file(t *testing.T, name string) []byte {
	b, err := os.ReadFile(filepath.Join(k.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMembersRacingToEnableAuthConverge: three members' Ensure at once
// (as at bootstrap) leave auth on, root and the members in the root
// role, and every caller without an error; a second round changes
// nothing.
func TestMembersRacingToEnableAuthConverge(t *testing.T) {
	k := start(t)
	member := k.as(t, k.file(t, "etcd-1.pem"), k.file(t, "etcd-1-key.pem"))
	members := []string{"etcd-1", "etcd-2", "etcd-3"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 3)
	turnedOn := make([]bool, 3)
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			turnedOn[i], errs[i] = Ensure(ctx, member, members)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("caller %d: %v", i, err)
		}
	}
	if !turnedOn[0] && !turnedOn[1] && !turnedOn[2] {
		t.Error("no caller turned auth on")
	}
	st, err := member.AuthStatus(ctx)
	if err != nil || !st.Enabled {
		t.Fatalf("auth status %v: %v", st, err)
	}
	users, err := member.UserList(ctx)
	if err != nil || strings.Join(users.Users, " ") != "etcd-1 etcd-2 etcd-3 kube-apiserver-etcd-client root" {
		t.Errorf("users %v: %v", users, err)
	}
	for _, u := range users.Users {
		want := "root"
		if u == spec.KubeAPIServerCN {
			want = u
		}
		if r, err := member.UserGet(ctx, u); err != nil || strings.Join(r.Roles, " ") != want {
			t.Errorf("%s roles %v: %v", u, r, err)
		}
	}
	if on, err := Ensure(ctx, member, members); err != nil || on {
		t.Errorf("second round: turned on %v, %v", on, err)
	}
}

// TestClientRoleHoldsToItsPrefix: a client's certificate reads and writes
// its prefix only; a read-only client cannot write; adding it again with
// another prefix is refused; after removal it reads nothing.
func TestClientRoleHoldsToItsPrefix(t *testing.T) {
	k := start(t)
	admin := k.as(t, k.file(t, pki.AdminCert), k.file(t, pki.AdminKey))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := Ensure(ctx, admin, []string{"etcd-1"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Client{{Name: "app", Prefix: "/app/"}, {Name: "audit", Prefix: "/app/", ReadOnly: true}} {
		if err := AddClient(ctx, admin, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := AddClient(ctx, admin, Client{Name: "app", Prefix: "/app/"}); err != nil {
		t.Errorf("adding the same client again: %v", err)
	}
	if err := AddClient(ctx, admin, Client{Name: "app", Prefix: "/other/"}); err == nil || !strings.Contains(err.Error(), `exists with prefix "/app/"`) {
		t.Errorf("another prefix: %v", err)
	}
	if err := AddClient(ctx, admin, Client{Name: "all"}); err == nil {
		t.Error("an empty prefix was accepted")
	}
	issue := func(name string) *clientv3.Client {
		p, err := pki.IssueClient(k.c, k.dir, name)
		if err != nil {
			t.Fatal(err)
		}
		return k.as(t, p.Cert, p.Key)
	}
	app, audit, stranger := issue("app"), issue("audit"), issue("stranger")
	denied := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s was allowed", what)
		}
	}
	if _, err := app.Put(ctx, "/app/k", "v"); err != nil {
		t.Errorf("app put: %v", err)
	}
	if r, err := audit.Get(ctx, "/app/k"); err != nil || len(r.Kvs) != 1 {
		t.Errorf("audit get: %v %v", r, err)
	}
	_, err := audit.Put(ctx, "/app/k", "w")
	denied("a read-only put", err)
	_, err = app.Put(ctx, "/apps", "x") // outside "/app/", though it shares "/app"
	denied("a put beside the prefix", err)
	_, err = stranger.Get(ctx, "/app/k")
	denied("a certificate without a user", err)
	// The Kubernetes API server's user, made by Ensure: what its storage
	// layer does (objects and the health key under /registry/) is
	// allowed, and nothing else; not its compactor's key, nor compaction,
	// which etcd allows to root only (the members compact themselves).
	kube := issue(spec.KubeAPIServerCN)
	if _, err := kube.Put(ctx, "/registry/namespaces/default", "x"); err != nil {
		t.Errorf("kube-apiserver put under /registry/: %v", err)
	}
	r, err := kube.Get(ctx, "/registry/health")
	if err != nil {
		t.Errorf("kube-apiserver health read: %v", err)
	}
	_, err = kube.Compact(ctx, r.Header.Revision)
	denied("kube-apiserver compacting", err)
	_, err = kube.Get(ctx, "compact_rev_key")
	denied("kube-apiserver reading compact_rev_key", err)
	_, err = kube.Get(ctx, "/app/k")
	denied("kube-apiserver reading an application's key", err)
	_, err = kube.Put(ctx, "/registryx", "x")
	denied("kube-apiserver writing beside its prefix", err)
	cs, err := Clients(ctx, admin, []string{"etcd-1"})
	if err != nil || len(cs) != 3 || cs[0] != (Client{Name: "app", Prefix: "/app/"}) || cs[1] != (Client{Name: "audit", Prefix: "/app/", ReadOnly: true}) || cs[2] != KubeAPIServer {
		t.Errorf("clients %+v: %v", cs, err)
	}
	if err := RemoveClient(ctx, admin, "app"); err != nil {
		t.Fatal(err)
	}
	_, err = app.Get(ctx, "/app/k")
	denied("a removed client's read", err)
	if err := RemoveClient(ctx, admin, "app"); err != nil {
		t.Errorf("removing it again: %v", err)
	}
}

// TestPrefixesReachingTheProductsKeysAreRefused: a client's prefix may
// not equal or overlap etcdimg's own keys (/etcdimg/: the backup
// service's lock and record) nor the API server's (/registry/), nor hold
// "..". A client with prefix / wrote /etcdimg/backup/last and
// /registry/secrets/... against a real etcd (issue 21).
func TestPrefixesReachingTheProductsKeysAreRefused(t *testing.T) {
	k := start(t)
	admin := k.as(t, k.file(t, pki.AdminCert), k.file(t, pki.AdminKey))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := Ensure(ctx, admin, []string{"etcd-1"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		prefix, want string
	}{
		{"/", `prefix "/" overlaps /etcdimg/`},
		{"/etc", `overlaps /etcdimg/`},
		{"/etcdimg/", `overlaps /etcdimg/`},
		{"/etcdimg/backup/", `overlaps /etcdimg/`},
		{"/registry/", `overlaps /registry/`},
		{"/registry", `overlaps /registry/`},
		{"/registry/secrets/", `overlaps /registry/`},
		{"/app/../etcdimg/", `holds ".."`},
		{"/app/..", `holds ".."`},
		{"", "name the client's key prefix"},
		{"app/", "starting with /"},
		{"/app/", ""},
		{"/registryx/", ""},
		{"/etcdimgx/", ""},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			name := "c" + strings.Map(func(r rune) rune {
				if r >= 'a' && r <= 'z' {
					return r
				}
				return '-'
			}, tc.prefix) + "x"
			err := CheckPrefix(tc.prefix)
			addErr := AddClient(ctx, admin, Client{Name: name, Prefix: tc.prefix})
			if tc.want == "" {
				if err != nil || addErr != nil {
					t.Errorf("refused: %v / %v", err, addErr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("CheckPrefix: %v, want one line with %q", err, tc.want)
			}
			if addErr == nil || !strings.Contains(addErr.Error(), tc.want) {
				t.Errorf("AddClient: %v, want %q", addErr, tc.want)
			}
			if _, err := admin.UserGet(ctx, name); err == nil {
				t.Errorf("a refused client's user %s exists", name)
			}
		})
	}
}

// TestOverlappingPrefixes: which existing clients' prefixes overlap a new
// one's (each reaches keys of the other), for a warning.
func TestOverlappingPrefixes(t *testing.T) {
	existing := []Client{{Name: "app", Prefix: "/app/"}, {Name: "appx", Prefix: "/apps/"}, {Name: "sub", Prefix: "/app/sub/"}, KubeAPIServer}
	for _, tc := range []struct {
		c    Client
		want string
	}{
		{Client{Name: "audit", Prefix: "/app/", ReadOnly: true}, "app sub"},
		{Client{Name: "deep", Prefix: "/app/sub/x/"}, "app sub"},
		{Client{Name: "wide", Prefix: "/ap"}, "app appx sub"},
		{Client{Name: "other", Prefix: "/other/"}, ""},
		{Client{Name: "app", Prefix: "/app/"}, "sub"}, // itself is not counted
	} {
		var names []string
		for _, o := range Overlapping(existing, tc.c) {
			names = append(names, o.Name)
		}
		if got := strings.Join(names, " "); got != tc.want {
			t.Errorf("Overlapping(%s %s) = %q, want %q", tc.c.Name, tc.c.Prefix, got, tc.want)
		}
	}
}

// TestNamesCannotCollideIntoRoot: a member's name that is an existing
// client's user is not made root (the client's certificate would become
// root), and a client named like a member (a user holding root) is
// refused (issue 21).
func TestNamesCannotCollideIntoRoot(t *testing.T) {
	k := start(t)
	admin := k.as(t, k.file(t, pki.AdminCert), k.file(t, pki.AdminKey))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := Ensure(ctx, admin, []string{"etcd-1"}); err != nil {
		t.Fatal(err)
	}
	if err := AddClient(ctx, admin, Client{Name: "etcd-4", Prefix: "/app/"}); err != nil {
		t.Fatal(err)
	}
	_, err := Ensure(ctx, admin, []string{"etcd-1", "etcd-4"})
	if err == nil || !strings.Contains(err.Error(), "etcd-4 is an application client") {
		t.Errorf("a member named like a client: %v", err)
	}
	if r, err := admin.UserGet(ctx, "etcd-4"); err != nil || slices.Contains(r.Roles, Root) {
		t.Errorf("the client etcd-4 holds %v (%v)", r, err)
	}
	for _, name := range []string{"etcd-1", Root} {
		if err := AddClient(ctx, admin, Client{Name: name, Prefix: "/app/"}); err == nil || !strings.Contains(err.Error(), "holds the root role") {
			t.Errorf("a client named %s: %v", name, err)
		}
		if r, err := admin.RoleGet(ctx, name); err == nil && name != Root {
			t.Errorf("a role %s was made: %v", name, r)
		}
	}
}

// TestRemovedMembersLoseRoot: a member removed from the spec and the
// cluster loses its user, so its still valid certificate is no longer
// root (issue 21). A name the caller does not know but the cluster lists
// (a member added after the caller's image was built, during a roll) is
// kept, and nothing is removed while a member has not published its name.
func TestRemovedMembersLoseRoot(t *testing.T) {
	k := start(t) // its one member is etcd-1
	admin := k.as(t, k.file(t, pki.AdminCert), k.file(t, pki.AdminKey))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := Ensure(ctx, admin, []string{"etcd-1", "etcd-2", "etcd-3"}); err != nil {
		t.Fatal(err)
	}
	if err := AddClient(ctx, admin, Client{Name: "app", Prefix: "/app/"}); err != nil {
		t.Fatal(err)
	}
	c3 := *k.c
	c3.Members = append(slices.Clone(k.c.Members), spec.Member{Name: "etcd-3", IP: "127.0.0.3"})
	p3, err := pki.Ensure(&c3, k.dir)
	if err != nil {
		t.Fatal(err)
	}
	etcd3 := k.as(t, p3.Members["etcd-3"].Cert, p3.Members["etcd-3"].Key)
	if _, err := etcd3.Put(ctx, "/etcdimg/backup/last", "x"); err != nil {
		t.Fatalf("etcd-3 while a member: %v", err)
	}
	users := func() string {
		t.Helper()
		r, err := admin.UserList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(r.Users, " ")
	}

	// A member not yet named in the cluster (a learner that has not
	// started): nothing is removed.
	learner, err := admin.MemberAddAsLearner(ctx, []string{"http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Ensure(ctx, admin, []string{"etcd-1", "etcd-2"}); err != nil {
		t.Fatal(err)
	}
	if got := users(); got != "app etcd-1 etcd-2 etcd-3 kube-apiserver-etcd-client root" {
		t.Errorf("with an unnamed member, users %q", got)
	}
	if _, err := admin.MemberRemove(ctx, learner.Member.ID); err != nil {
		t.Fatal(err)
	}

	// etcd-3 left the spec (the caller's list) and the cluster.
	if _, err := Ensure(ctx, admin, []string{"etcd-1", "etcd-2"}); err != nil {
		t.Fatal(err)
	}
	if got := users(); got != "app etcd-1 etcd-2 kube-apiserver-etcd-client root" {
		t.Errorf("after etcd-3 left, users %q", got)
	}
	if _, err := etcd3.Get(ctx, "/etcdimg/backup/last"); err == nil {
		t.Error("the removed member's certificate still reads")
	}
	// An old image that does not know etcd-1 (added after it was built)
	// leaves it: the cluster lists it.
	if _, err := Ensure(ctx, admin, []string{"etcd-2"}); err != nil {
		t.Fatal(err)
	}
	if got := users(); got != "app etcd-1 etcd-2 kube-apiserver-etcd-client root" {
		t.Errorf("a caller that does not know etcd-1: users %q", got)
	}
}

// TestProductPrefixHoldsTheBackupKeys: the prefix no client may reach is
// where the backup service keeps its lock and record.
func TestProductPrefixHoldsTheBackupKeys(t *testing.T) {
	for _, k := range []string{backup.LockKey, backup.RecordKey} {
		if !strings.HasPrefix(k, ProductPrefix) || CheckPrefix(k) == nil {
			t.Errorf("%s is not under %s, or a client may reach it", k, ProductPrefix)
		}
	}
}
