package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"time"

	"etcdimg/image"
	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/internal/render"
	"etcdimg/internal/slot"
	"etcdimg/internal/spec"
)

// NodeAPI reaches the members' node APIs (layout.NodeAPIPort) with the
// admin certificate.
type NodeAPI struct {
	Members map[string]string // member name → https://host:port
	TLS     *tls.Config
}

// AdminNodeAPI is c's node APIs, reached as reach says, with dir's admin
// certificate.
func AdminNodeAPI(c *spec.Cluster, dir outdir.Layout, reach render.Endpoint) (*NodeAPI, error) {
	tlsCfg, err := adminTLS(dir)
	if err != nil {
		return nil, err
	}
	return &NodeAPI{Members: memberURLs(c, reach, layout.NodeAPIPort), TLS: tlsCfg}, nil
}

func (n *NodeAPI) client(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{TLSClientConfig: n.TLS, ResponseHeaderTimeout: timeout}}
}

func (n *NodeAPI) do(ctx context.Context, member, method, path string, body io.Reader, timeout time.Duration, out any) error {
	base, ok := n.Members[member]
	if !ok {
		return fmt.Errorf("no member %q", member)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return err
	}
	resp, err := n.client(timeout).Do(req)
	if err != nil {
		return fmt.Errorf("%s's node API: %w", member, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s's node API: %s: %s", member, resp.Status, strings.TrimSpace(string(b)))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s's node API: %w", member, err)
		}
	}
	return nil
}

// Status is member's slots as it reports them.
func (n *NodeAPI) Status(ctx context.Context, member string) (slot.Status, error) {
	var st slot.Status
	err := n.do(ctx, member, http.MethodGet, slot.APIStatus, nil, 5*time.Second, &st)
	return st, err
}

// Stage sends b into member's inactive slot, leaving out the files whose
// SHA-256 is have's for their name (the member takes them from the slot
// it runs); it returns the state the member answers ("staged", or
// "running" for the slot it runs).
func (n *NodeAPI) Stage(ctx context.Context, member string, b slot.Bundle, have map[string]string) (string, error) {
	var buf bytes.Buffer
	if _, err := b.WriteLeavingOut(&buf, have); err != nil {
		return "", err
	}
	raw := buf.Bytes()
	var resp struct{ Slot, State string }
	err := n.do(ctx, member, http.MethodPut, slot.APIUpdate, bytes.NewReader(raw), 10*time.Minute, &resp)
	return resp.State, err
}

// Reboot asks member to stop etcd and reboot.
func (n *NodeAPI) Reboot(ctx context.Context, member string) error {
	return n.do(ctx, member, http.MethodPost, slot.APIReboot, nil, 10*time.Second, nil)
}

// Upgrader is the Driver of a network upgrade: it needs nothing from the
// machines' platform. Swap sends the image's slot to the member over its
// node API, reboots it into the slot, and waits until the member has
// marked the slot good, or has rolled back from it.
type Upgrader struct {
	API *NodeAPI
	// Trial bounds the wait for the new slot: the member's tries times
	// its trial timeout, and some.
	Trial time.Duration
	// Full sends every file of a slot, even those the member runs
	// already.
	Full bool
	// AllowDowngrade lets Lifecycle.Upgrade install images whose etcd is
	// one minor below the cluster's version: before the first member
	// goes down it runs etcd's own downgrade (Etcd.Downgrade).
	AllowDowngrade bool
	// AllowOutage lets Lifecycle.Upgrade take a one- or two-member
	// cluster below its quorum while a member reboots into its slot
	// (ReplaceOptions.AllowOutage).
	AllowOutage bool
}

// Running reports whether member's node API answers.
func (u *Upgrader) Running(member string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := u.API.Status(ctx, member)
	return err == nil, nil
}

// Current reports whether member runs the slot of imagePath, marked good.
func (u *Upgrader) Current(ctx context.Context, member, imagePath string) (bool, error) {
	b, _, err := image.ReadSlot(imagePath)
	if err != nil {
		return false, err
	}
	st, err := u.API.Status(ctx, member)
	if err != nil {
		return false, err
	}
	return st.Running.Digest == slot.Digest(b.Manifest) && st.Running.State == slot.StateGood, nil
}

// Swap installs imagePath's slot on member and reboots it into the slot.
// A network upgrade keeps the data disk: keepDisk must be set.
func (u *Upgrader) Swap(ctx context.Context, member, imagePath string, keepDisk bool, say Say) error {
	if !keepDisk {
		return fmt.Errorf("upgrade: %s: a network upgrade keeps the data disk; a blank disk needs `replace` on the machine", member)
	}
	start := time.Now()
	b, m, err := image.ReadSlot(imagePath)
	if err != nil {
		return err
	}
	digest := slot.Digest(b.Manifest)
	before, err := u.API.Status(ctx, member)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("upgrade: %w (nothing serves the node API there: a member built before boot slots has none; move it once with `roll --keep-disks`)", err)
		}
		return fmt.Errorf("upgrade: %w", err)
	}
	if before.Running.Digest == digest && before.Running.State == slot.StateGood {
		say(fmt.Sprintf("%s: runs slot %s already", member, m.ID), time.Since(start))
		return nil
	}
	if rb := before.RolledBack; rb != nil && rb.ID == m.ID {
		why := rb.Trial
		if why == "" {
			why = "no reason recorded"
		}
		return fmt.Errorf("upgrade: %s rolled back from this very slot %s after %d tries (%s); it is not sent again: build a fixed image, or re-image the member with `replace %s --keep-disk`", member, m.ID, rb.TriesDone, why, member)
	}
	if before.Running.State == slot.StateTrial {
		return fmt.Errorf("upgrade: %s: its running slot %s is still on trial (%s); wait until it is marked good", member, before.Running.ID, before.Waiting)
	}
	if before.Running.Digest != digest {
		// What the member runs already (the node binary, when only the
		// config changed) is not sent again: it copies it from its slot,
		// and derives the new UKI from its own when only the slot ID in
		// the command line differs (slot.Reusable).
		have := map[string]string{}
		if rm := before.Running.Manifest; rm != nil && !u.Full {
			if have, err = slot.Reusable(*rm, b); err != nil {
				return fmt.Errorf("upgrade: %s: %w", member, err)
			}
		}
		var sent int64
		for _, f := range m.Files {
			if have[f.Name] != f.SHA256 {
				sent += f.Size
			}
		}
		state, err := u.API.Stage(ctx, member, b, have)
		if err != nil && len(have) > 0 && strings.Contains(err.Error(), slot.ErrLeftOut) {
			// Its own copy of a file left out does not match: once more,
			// whole.
			say(fmt.Sprintf("%s: %v; sending the whole slot", member, err), time.Since(start))
			sent = m.Size()
			state, err = u.API.Stage(ctx, member, b, nil)
		}
		if err != nil {
			return fmt.Errorf("upgrade: %s refused the update: %w", member, err)
		}
		say(fmt.Sprintf("%s: slot %s %s (%.0f MiB, %.0f MiB sent, etcd %s)", member, m.ID, state, float64(m.Size())/(1<<20), float64(sent)/(1<<20), m.Etcd), time.Since(start))
	}
	start = time.Now()
	if err := u.API.Reboot(ctx, member); err != nil {
		return err
	}
	say(fmt.Sprintf("%s: rebooting into slot %s", member, m.ID), time.Since(start))
	start = time.Now()
	if err := u.waitGood(ctx, member, m.ID, before.Running.ID); err != nil {
		return err
	}
	say(fmt.Sprintf("%s: booted slot %s and marked it good", member, m.ID), time.Since(start))
	return nil
}

// waitGood waits until member runs slot id marked good, or has rolled
// back from it.
func (u *Upgrader) waitGood(ctx context.Context, member, id, old string) error {
	start := time.Now()
	bound := u.Trial
	if bound == 0 {
		bound = 35 * time.Minute
	}
	last := "not answering yet"
	for {
		if st, err := u.API.Status(ctx, member); err != nil {
			last = err.Error()
		} else {
			switch r := st.Running; {
			case r.ID == id && r.State == slot.StateGood:
				return nil
			case r.ID == id:
				last = fmt.Sprintf("slot %s on trial (try %d): %s", id, r.TriesDone, st.Waiting)
			case st.RolledBack != nil && st.RolledBack.ID == id:
				why := st.RolledBack.Trial
				if why == "" {
					why = "its boots ended before it could say why (a kernel panic, a hang, a power cut)"
				}
				return fmt.Errorf("%s ROLLED BACK to slot %s after %d tries of slot %s: %s", member, r.ID, st.RolledBack.TriesDone, id, why)
			case r.ID == old:
				last = fmt.Sprintf("still on slot %s", old)
			default:
				return fmt.Errorf("%s runs slot %s (%s), neither the one it ran (%s) nor the one sent (%s): another operator's, or a power cut in between; stopped", member, r.ID, r.State, old, id)
			}
		}
		if time.Since(start) > bound {
			return fmt.Errorf("%s did not mark slot %s good within %s: %s", member, id, bound, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// checkVersions refuses, before any member goes down, images whose etcd
// the cluster cannot move to (VersionGate), and says which etcd each
// member runs and will run. Images one minor below the cluster's
// version, when allowDowngrade, go through once etcd's own downgrade
// moved every member's storage version to theirs.
func (l *Lifecycle) checkVersions(ctx context.Context, images map[string]string, order []string, allowDowngrade bool) (downgrade string, err error) {
	start := time.Now()
	running, cluster, err := l.Etcd.Versions(ctx)
	if err != nil {
		return "", fmt.Errorf("upgrade: %w", err)
	}
	downgrading, err := l.Etcd.Downgrading(ctx, l.Pending)
	if err != nil {
		return "", fmt.Errorf("upgrade: %w", err)
	}
	next := map[string]string{}
	var said []string
	for _, n := range order {
		if images[n] == "" {
			return "", fmt.Errorf("upgrade: no image for %s", n)
		}
		_, m, err := image.ReadSlot(images[n])
		if err != nil {
			return "", err
		}
		next[n] = m.Etcd
		said = append(said, fmt.Sprintf("%s %s → %s", n, running[n], m.Etcd))
	}
	target, err := VersionGate(VersionMove{Running: running, Next: next, Cluster: cluster, Downgrading: downgrading, AllowDowngrade: allowDowngrade})
	if err != nil {
		return "", fmt.Errorf("upgrade: refused before any member: %w", err)
	}
	line := fmt.Sprintf("etcd: cluster version %s; %s", cluster, strings.Join(said, ", "))
	if downgrading != "" {
		line += fmt.Sprintf("; downgrade to %s enabled (etcd ends it once every member runs it)", downgrading)
	}
	l.say(line, start)
	switch {
	case target != "":
		if err := l.Etcd.Downgrade(ctx, target, l.Pending, downgradeWithin, l.say); err != nil {
			return target, fmt.Errorf("upgrade: before any member: %w", err)
		}
		downgrading = target
	case downgrading != "":
		// A run that stopped after enabling it: the members' storage
		// version may still lag the cluster's version, which moved at
		// once.
		if err := l.Etcd.WaitStorage(ctx, downgrading, l.Pending, downgradeWithin, l.say); err != nil {
			return downgrading, fmt.Errorf("upgrade: before any member: %w", err)
		}
	}
	if minor := minorUpgrade(next, cluster); minor != "" {
		last := order[len(order)-1]
		l.say(fmt.Sprintf("etcd: the cluster moves to %s once every member runs it; should %s, the last, roll back after that, its old etcd cannot start below the cluster's version: re-image it with `replace %s --keep-disk` from the new image", minor, last, last), start)
	}
	return downgrading, nil
}

// UpgradeOrder is the order an upgrade goes through members: the
// followers in spec order, then the leader.
func UpgradeOrder(members []string, leader string) []string {
	order := slices.Clone(members)
	if i := slices.Index(order, leader); i >= 0 {
		order = append(slices.Delete(order, i, i+1), leader)
	}
	return order
}

// Upgrade installs each member's new image (images: member → raw image)
// over the network, one member at a time, followers first and the leader
// last after its leadership moved: before each, every other member must
// be healthy and its absence leave a quorum (Replace with the disk
// kept). Members that run their image's slot already are skipped, so a
// stopped upgrade run again resumes. It stops at the first member that
// does not come back good, naming it.
func (l *Lifecycle) Upgrade(ctx context.Context, u *Upgrader, images map[string]string, only []string) (done []string, err error) {
	snap, err := l.Etcd.Observe(ctx)
	if err != nil {
		return nil, fmt.Errorf("upgrade: the cluster does not answer: %w", err)
	}
	leader := ""
	if ld, ok := snap.Leader(); ok {
		leader = ld.Name
	}
	members := l.Members
	if only != nil {
		members = only
	}
	order := UpgradeOrder(members, leader)
	// Before anything changes, etcd's downgrade included: every member
	// settled on a good slot.
	if err := u.settled(ctx, l.settledOnes("")); err != nil {
		return nil, fmt.Errorf("upgrade: refused before any member: %w", err)
	}
	downgrade, err := l.checkVersions(ctx, images, order, u.AllowDowngrade)
	if err != nil {
		return nil, withDowngrade(err, downgrade)
	}
	for i, n := range order {
		if images[n] == "" {
			return done, fmt.Errorf("upgrade: no image for %s", n)
		}
		start := time.Now()
		if cur, err := u.Current(ctx, n, images[n]); err == nil && cur {
			l.say(fmt.Sprintf("%s runs its new image already: skipped", n), start)
			continue
		}
		err := u.settled(ctx, l.settledOnes(n))
		if err == nil {
			err = l.Replace(ctx, n, ReplaceOptions{Image: images[n], KeepDisk: true, AllowOutage: u.AllowOutage})
		}
		if err != nil {
			rest := "no member was left untouched"
			if i+1 < len(order) {
				rest = strings.Join(order[i+1:], ", ") + " not touched"
			}
			return done, withDowngrade(fmt.Errorf("upgrade stopped at %s (%d of %d): %w; %s", n, i+1, len(order), err, rest), downgrade)
		}
		done = append(done, n)
	}
	return done, nil
}

// settledOnes are the members whose slots must be settled before but
// member goes down: every member of the cluster but it and those not in
// the cluster yet.
func (l *Lifecycle) settledOnes(but string) []string {
	return slices.DeleteFunc(slices.Clone(l.Members), func(n string) bool { return n == but || slices.Contains(l.Pending, n) })
}

// settled refuses while a member of names runs a slot on trial (it
// reboots by itself if its gate fails: taking another member down then
// could cost the quorum) or does not say which slot it runs.
func (u *Upgrader) settled(ctx context.Context, names []string) error {
	for _, n := range names {
		st, err := u.API.Status(ctx, n)
		if err != nil {
			return fmt.Errorf("%w; upgrade takes a member down only while every other one runs a good slot", err)
		}
		if st.Running.State == slot.StateTrial {
			waiting := ""
			if st.Waiting != "" {
				waiting = " (" + st.Waiting + ")"
			}
			return fmt.Errorf("%s runs slot %s on trial%s: wait until it marks it good or rolls back (etcdimg status), then run upgrade again", n, st.Running.ID, waiting)
		}
	}
	return nil
}

// withDowngrade adds to an upgrade's stop that etcd's downgrade to
// target, which it or a run before enabled, stays enabled.
func withDowngrade(err error, target string) error {
	if target == "" {
		return err
	}
	return fmt.Errorf("%w; etcd's downgrade to %s stays enabled: run `etcdimg upgrade --allow-downgrade` again to go on, or cancel it with `etcdimg etcdctl -- downgrade cancel`", err, target)
}

// minorUpgrade is the minor version (major.minor) the images move the
// cluster to, when it is newer than the cluster's, or "".
func minorUpgrade(next map[string]string, cluster string) string {
	cv, err := parseVersion(cluster)
	if err != nil {
		return ""
	}
	for _, n := range next {
		if nv, err := parseVersion(n); err == nil && nv.major == cv.major && nv.minor > cv.minor {
			return nv.minorOnly()
		}
	}
	return ""
}
