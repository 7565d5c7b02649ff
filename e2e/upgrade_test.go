package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"etcdimg/cluster"
	"etcdimg/image"
	"etcdimg/internal/outdir"
	"etcdimg/internal/slot"
	"etcdimg/internal/spec"
	"etcdimg/testvm/local"
)

// imageSlots are images/manifest.json's slot digests, by member.
func imageSlots(t *testing.T, out string) map[string]string {
	t.Helper()
	var m struct{ Images []image.ImageRecord }
	if err := json.Unmarshal([]byte(mustRead(t, filepath.Join(out, "images", image.ManifestFile))), &m); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range m.Images {
		if r.Format == "raw" {
			got[r.Member] = r.SlotDigest
		}
	}
	return got
}

// runningSlots are the slots the members report running (digest and
// state), over their node APIs.
func runningSlots(t *testing.T, api *cluster.NodeAPI, names []string) map[string]slot.Status {
	t.Helper()
	got := map[string]slot.Status{}
	for _, n := range names {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := api.Status(ctx, n)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		got[n] = st
	}
	return got
}

// TestUpgradeOverTheNetwork is docs/lifecycle.md's upgrade: each
// member's new image goes into its inactive boot slot over its node API,
// one member at a time, under write load; a tampered or foreign-signed
// update is refused with the slots unchanged; certificates other than the
// admin's and the members' get 403; an image whose node binary cannot
// start rolls its member back by itself, upgrade stops naming it and
// leaves the others untouched; a second operator is refused by the
// cluster's operation lock; run again, upgrade skips the members that
// run their image already. No acknowledged write is lost.
func TestUpgradeOverTheNetwork(t *testing.T) {
	longTest(t, rankUpgrade)
	u := upThree(t)
	names := []string{"etcd-1", "etcd-2", "etcd-3"}
	before, clusterID := membersByName(t, u)
	api, err := cluster.AdminNodeAPI(mustSpec(t, u), outdir.Layout(u.out), nodeAPIReach(u))
	if err != nil {
		t.Fatal(err)
	}
	start := runningSlots(t, api, names)
	for n, st := range start {
		if st.Running.State != slot.StateGood || st.Running.Gen != 1 || st.Member != n {
			t.Errorf("%s before the upgrade: %+v", n, st.Running)
		}
	}

	// A changed spec (the upgrade's own settings: short, for the test)
	// gives every member a new config, so a new slot.
	c := mustSpec(t, u)
	c.Upgrade = spec.Upgrade{GoodAfter: spec.Duration(5 * time.Second), TrialTimeout: spec.Duration(90 * time.Second), Tries: 2}
	raw, err := spec.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(u.work, "upgrade.yaml")
	os.WriteFile(cfg, raw, 0o644)
	w := startWriter(t, u, "/load/upgrade")
	time.Sleep(2 * time.Second)
	began := time.Now()
	stdout, stderr, code := etcdimg(t, u.work, "upgrade", "--config", cfg, "--out", u.out)
	t.Logf("upgrade (%s):\n%s", time.Since(began).Round(time.Second), stdout)
	if code != 0 {
		t.Fatalf("upgrade: exit %d: %s", code, stderr)
	}
	time.Sleep(2 * time.Second)
	w.Stop()
	runs, acked, failed := w.outages()
	t.Logf("upgrade: %d writes acknowledged, %d failed in %d outages", acked, failed, runs)
	checkAcked(t, u, w)
	want := imageSlots(t, u.out)
	upgraded := runningSlots(t, api, names)
	for _, n := range names {
		st := upgraded[n]
		if st.Running.Digest != want[n] || st.Running.State != slot.StateGood || st.Running.Gen != 2 {
			t.Errorf("%s after the upgrade: %+v, want slot digest %s marked good", n, st.Running, want[n])
		}
		if st.Other == nil || st.Other.ID != start[n].Running.ID || st.Other.State != slot.StateGood {
			t.Errorf("%s: the old slot is not kept to fall back on: %+v", n, st.Other)
		}
	}
	if after, id := membersByName(t, u); id != clusterID || fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("after the upgrade: cluster %x members %v, want %x %v", id, after, clusterID, before)
	}
	if !strings.Contains(stdout, "leadership moved") || !strings.Contains(stdout, "upgraded 3 members") {
		t.Errorf("upgrade said:\n%s", stdout)
	}

	// An update signed by another key is refused before anything is
	// written: both slots are unchanged. One with a flipped byte is
	// refused too, found while it streams into the inactive slot (the
	// old image's, which an update replaces): the running slot is
	// untouched and nothing new is left to boot. Both are etcd-2's
	// previous image, a slot it does not run.
	prev, _ := filepath.Glob(filepath.Join(u.out, "images", "previous", "etcd-2-*.img"))
	if len(prev) == 0 {
		t.Fatal("no previous image of etcd-2")
	}
	bundle, man, err := image.ReadSlot(prev[len(prev)-1])
	if err != nil {
		t.Fatal(err)
	}
	flipped := slot.Bundle{Manifest: bundle.Manifest, Signature: bundle.Signature, Files: map[string][]byte{}}
	for k, v := range bundle.Files {
		flipped.Files[k] = v
	}
	node := append([]byte(nil), bundle.Files[slot.FileNode]...)
	node[len(node)/2] ^= 0x40
	flipped.Files[slot.FileNode] = node
	_, foreignKey, _ := ed25519.GenerateKey(rand.Reader)
	foreign, err := slot.NewBundle(man, bundle.Files, foreignKey)
	if err != nil {
		t.Fatal(err)
	}
	stage := func(b slot.Bundle) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		_, err := api.Stage(ctx, "etcd-2", b, nil)
		return err
	}
	if err := stage(foreign); err == nil || !strings.Contains(err.Error(), "not this member's image-signing key") {
		t.Errorf("signed by another key: %v", err)
	}
	slots := func(st slot.Status) string {
		s := st.Running.Digest + " " + st.Running.State
		if o := st.Other; o != nil {
			s += fmt.Sprintf("; other %s gen %d %s", o.ID, o.Gen, o.State)
		}
		return s
	}
	if now := runningSlots(t, api, []string{"etcd-2"})["etcd-2"]; slots(now) != slots(upgraded["etcd-2"]) {
		t.Errorf("an update signed by another key changed etcd-2's slots: %s, was %s", slots(now), slots(upgraded["etcd-2"]))
	}
	if err := stage(flipped); err == nil || !strings.Contains(err.Error(), "the update was changed on the way") {
		t.Errorf("a flipped byte in the node binary: %v", err)
	}
	now := runningSlots(t, api, []string{"etcd-2"})["etcd-2"]
	if now.Running.Digest != upgraded["etcd-2"].Running.Digest || now.Running.State != slot.StateGood || now.Other != nil && now.Other.State == slot.StateStaged {
		t.Errorf("after a tampered update etcd-2 has %+v (other %+v), want its running slot alone", now.Running, now.Other)
	}

	// The node API serves the admin and the members only.
	if _, stderr, code := etcdimg(t, u.work, "client", "add", "app", "--prefix", "/app/", "--out", u.out); code != 0 {
		t.Fatalf("client add: %s", stderr)
	}
	pkiDir := filepath.Join(u.out, "pki")
	for _, tc := range []struct {
		what, cert, key string
		want            int
	}{
		{"an application client", filepath.Join(u.out, "clients", "app.pem"), filepath.Join(u.out, "clients", "app-key.pem"), http.StatusForbidden},
		{"a member", filepath.Join(pkiDir, "etcd-1.pem"), filepath.Join(pkiDir, "etcd-1-key.pem"), http.StatusOK},
		{"the admin", filepath.Join(pkiDir, "admin.pem"), filepath.Join(pkiDir, "admin-key.pem"), http.StatusOK},
	} {
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig(t, filepath.Join(pkiDir, "etcd-ca.pem"), tc.cert, tc.key)}}
		resp, err := hc.Get(api.Members["etcd-2"] + slot.APIStatus)
		if err != nil {
			t.Errorf("%s: %v", tc.what, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: HTTP %d, want %d", tc.what, resp.StatusCode, tc.want)
		}
	}

	// An image whose node binary cannot start: etcd-2 boots it, fails,
	// spends its tries and boots its old slot again by itself; upgrade
	// stops naming it. Meanwhile a second operator, from a copy of the
	// output directory, is refused by the operation lock.
	bad := badNodeBinary(t, u.work)
	w = startWriter(t, u, "/load/upgrade-bad")
	type result struct {
		stdout, stderr string
		code           int
	}
	done := make(chan result, 1)
	go func() {
		o, e, c := etcdimg(t, u.work, "upgrade", "etcd-2", "--config", cfg, "--out", u.out, "--node-binary", bad)
		done <- result{o, e, c}
	}()
	// The copy holds what reaches the cluster (spec, PKI, the run
	// state with the forwarded ports), not the disks.
	copyOut := filepath.Join(u.work, "copy")
	os.MkdirAll(copyOut, 0o700)
	if b, err := exec.Command("sh", "-c", "tar -C "+u.out+" --exclude=./disks --exclude=./images -cf - . | tar -C "+copyOut+" -xf -").CombinedOutput(); err != nil {
		t.Fatalf("copy the output directory: %v\n%s", err, b)
	}
	// The second starts once the first holds the lock: started before,
	// it would take the lock itself and the first be refused (CI once
	// saw exactly that).
	lockReader := u.client(t, 0, u.admin) // etcd-1 stays up meanwhile
	waitUntil(t, u, 2*time.Minute, "the first upgrade holding the operation lock", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := lockReader.Get(ctx, cluster.OperationLockKey)
		return err == nil && len(r.Kvs) == 1
	})
	var second string
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		_, e, c := etcdimg(t, u.work, "upgrade", "--config", cfg, "--out", copyOut)
		if second = e; c != 0 && strings.Contains(e, "another operation holds the cluster") {
			break
		}
		time.Sleep(3 * time.Second)
	}
	if !strings.Contains(second, "another operation holds the cluster: upgrade, by") {
		t.Errorf("a second upgrade while the first runs: %s", second)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(15 * time.Minute):
		t.Fatal("the bad upgrade did not end within 15 minutes")
	}
	t.Logf("upgrade etcd-2 with a node binary that cannot start:\n%s%s", r.stdout, r.stderr)
	if r.code != 1 || !strings.Contains(r.stderr, "etcd-2 ROLLED BACK") {
		t.Errorf("the bad upgrade: exit %d: %s", r.code, r.stderr)
	}
	w.Stop()
	checkAcked(t, u, w)
	rolled := runningSlots(t, api, names)
	for _, n := range names {
		if rolled[n].Running.Digest != upgraded[n].Running.Digest || rolled[n].Running.State != slot.StateGood {
			t.Errorf("%s after the bad upgrade runs %+v, want its good slot %s", n, rolled[n].Running, upgraded[n].Running.Digest)
		}
	}
	if rb := rolled["etcd-2"].RolledBack; rb == nil || rb.State != slot.StateBad {
		t.Errorf("etcd-2 does not report the rollback: %+v", rolled["etcd-2"])
	}
	if c := consoleOf(u, "etcd-2"); !strings.Contains(c, "ROLLED BACK from slot") {
		t.Errorf("etcd-2's console does not say it rolled back:\n%s", lastLines(c, 30))
	}

	// Power cuts (kill -9 of QEMU): while an update streams into etcd-3's
	// inactive slot, and during the new slot's first boot. Each time
	// etcd-3 comes back healthy on one of its slots. The update is
	// etcd-3's previous image, a slot it does not run.
	prev3, _ := filepath.Glob(filepath.Join(u.out, "images", "previous", "etcd-3-*.img"))
	if len(prev3) == 0 {
		t.Fatal("no previous image of etcd-3")
	}
	b3, m3, err := image.ReadSlot(prev3[0])
	if err != nil {
		t.Fatal(err)
	}
	cut := func() {
		t.Helper()
		st, lock, err := local.Open(outdir.Layout(u.out))
		if err != nil {
			t.Fatal(err)
		}
		err = st.Kill("etcd-3")
		lock.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		if _, stderr, code := etcdimg(t, u.work, "start", "etcd-3", "--out", u.out); code != 0 {
			t.Fatalf("start etcd-3: %s", stderr)
		}
		u.reload(t)
	}
	staged := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		_, err := api.Stage(ctx, "etcd-3", b3, nil)
		staged <- err
	}()
	time.Sleep(3 * time.Second)
	cut()
	if err := <-staged; err == nil {
		t.Log("the update was staged before the power cut: the cut came late")
	}
	waitHealthy(t, u)
	cutWhileStaging := runningSlots(t, api, []string{"etcd-3"})["etcd-3"]
	if cutWhileStaging.Running.Digest != upgraded["etcd-3"].Running.Digest || cutWhileStaging.Running.State != slot.StateGood {
		t.Errorf("after a power cut while staging etcd-3 runs %+v, want its good slot", cutWhileStaging.Running)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	if state, err := api.Stage(ctx, "etcd-3", b3, nil); err != nil || state != slot.StateStaged {
		t.Fatalf("stage etcd-3's previous image after the cut: %q %v", state, err)
	}
	if err := api.Reboot(ctx, "etcd-3"); err != nil {
		t.Fatal(err)
	}
	cancel()
	trialLine := fmt.Sprintf("check boot slot: slot %s (gen 3) trial", m3.ID)
	deadline = time.Now().Add(3 * time.Minute)
	for !strings.Contains(consoleOf(u, "etcd-3"), trialLine) {
		if time.Now().After(deadline) {
			t.Fatalf("etcd-3 did not boot its new slot on trial within 3 minutes; console:\n%s", lastLines(consoleOf(u, "etcd-3"), 30))
		}
		time.Sleep(time.Second)
	}
	cut()
	waitHealthy(t, u)
	var cutInTrial slot.Status
	deadline = time.Now().Add(5 * time.Minute)
	for {
		cutInTrial = runningSlots(t, api, []string{"etcd-3"})["etcd-3"]
		if cutInTrial.Running.State == slot.StateGood {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd-3 did not settle on a good slot after a power cut in its trial: %+v", cutInTrial)
		}
		time.Sleep(3 * time.Second)
	}
	t.Logf("after a power cut in its trial etcd-3 runs slot %s (gen %d) %s", cutInTrial.Running.ID, cutInTrial.Running.Gen, cutInTrial.Running.State)

	// Run again with the good binary, upgrade finishes: it skips the
	// members that run their image already.
	stdout, stderr, code = etcdimg(t, u.work, "upgrade", "--config", cfg, "--out", u.out)
	t.Logf("upgrade again:\n%s", stdout)
	if code != 0 || !strings.Contains(stdout, "etcd-1 runs its new image already: skipped") || !strings.Contains(stdout, "etcd-2 runs its new image already: skipped") {
		t.Errorf("upgrade again: exit %d: %s", code, stderr)
	}
	final := runningSlots(t, api, names)
	for _, n := range names {
		if final[n].Running.Digest != want[n] || final[n].Running.State != slot.StateGood {
			t.Errorf("%s at the end runs %+v, want its built slot %s", n, final[n].Running, want[n])
		}
	}
}

// badNodeBinary is a static program that stands where the node binary
// goes and cannot start a member: PID 1 exits at once.
func badNodeBinary(t *testing.T, work string) string {
	t.Helper()
	dir := filepath.Join(work, "bad")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module bad\n\ngo 1.22\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nimport \"os\"\n\nfunc main() {\n\tos.Stderr.WriteString(\"this node binary cannot start a member\\n\")\n\tos.Exit(1)\n}\n"), 0o644)
	out := filepath.Join(dir, "etcdnode")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the bad node binary: %v\n%s", err, b)
	}
	return out
}

func mustSpec(t *testing.T, u *upCluster) *spec.Cluster {
	t.Helper()
	c, err := spec.Parse([]byte(mustRead(t, filepath.Join(u.out, "etcdimg.yaml"))), "etcdimg.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// nodeAPIReach reaches the members' ports forwarded by up.
func nodeAPIReach(u *upCluster) func(m spec.Member, port int) string {
	return func(m spec.Member, port int) string {
		for _, s := range u.state.Members {
			if s.Name == m.Name {
				return fmt.Sprintf("127.0.0.1:%d", s.NodeAPI)
			}
		}
		return ""
	}
}
