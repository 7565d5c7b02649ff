package firstboot

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"etcdimg/firstboot/internal/console"
	"etcdimg/firstboot/slots"
	"etcdimg/ignition/ign"
	"etcdimg/internal/layout"
	"etcdimg/internal/slot"
)

// espMu serialises the moments the ESP is writable.
var espMu sync.Mutex

// writableESP runs fn with the ESP mounted read-write, and mounts it
// read-only again after.
func writableESP(fn func() error) error {
	espMu.Lock()
	defer espMu.Unlock()
	if err := unix.Mount("", layout.ESPRoot, "", unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("slots: mount the ESP read-write: %w", err)
	}
	err := fn()
	unix.Sync()
	if rerr := unix.Mount("", layout.ESPRoot, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); rerr != nil && err == nil {
		err = fmt.Errorf("slots: mount the ESP read-only again: %w", rerr)
	}
	return err
}

// bootSlot is the slot that booted (the kernel command line names it)
// and whether its entry still counts tries: read first thing by PID 1,
// so that a trial boot that stops at any step after it reboots, spending
// a try, rather than waiting for a power-off.
func bootSlot() (*slots.ESP, bool) {
	b, _ := os.ReadFile("/proc/cmdline")
	esp := &slots.ESP{Root: layout.ESPRoot, Running: slots.SlotFromCmdline(string(b)), Writable: writableESP}
	if esp.Running == "" {
		return esp, false
	}
	run, err := esp.RunningEntry()
	return esp, err == nil && run.Counting
}

// checkSlot reads which slot booted and how the slots stand: a slot on
// trial is watched (watchTrial) and marked good once the member is; a
// member that came back from an update that failed says so.
func checkSlot(st *state) (string, error) {
	st.n.mu.Lock()
	esp := st.n.esp
	st.n.mu.Unlock()
	if esp == nil || esp.Running == "" {
		return "", fmt.Errorf("the kernel command line names no boot slot (%s): rebuild the image with this etcdimg", layout.SlotArg)
	}
	s, err := esp.Status()
	if err != nil {
		return "", err
	}
	st.n.mu.Lock()
	st.n.trial = s.Running.State == slot.StateTrial
	st.n.mu.Unlock()
	writeSlotStatus(esp)
	if rb := s.RolledBack; rb != nil {
		why := rb.Trial
		if why == "" {
			why = "no reason recorded: its boots ended before PID 1 could say (a kernel panic, a hang, a power cut)"
		}
		logf("slots: ROLLED BACK from slot %s (gen %d) after %d tries: %s", rb.ID, rb.Gen, rb.TriesDone, why)
	}
	detail := fmt.Sprintf("slot %s (gen %d) %s", s.Running.ID, s.Running.Gen, s.Running.State)
	if s.Running.State == slot.StateTrial {
		detail += fmt.Sprintf(", try %d, %d left", s.Running.TriesDone, s.Running.TriesLeft)
	}
	if o := s.Other; o != nil && o != s.RolledBack {
		detail += fmt.Sprintf("; other slot %s (gen %d) %s", o.ID, o.Gen, o.State)
	}
	return detail, nil
}

// serveNodeAPI serves the node API on the member's address: the slots,
// updates and the reboot, to the admin and the members.
func serveNodeAPI(st *state) (string, error) {
	m, err := ign.ReadMember("/")
	if err != nil {
		return "", err
	}
	_, serverTLS, err := ign.MemberTLS("/", m.Env["ETCD_CERT_FILE"], m.Env["ETCD_KEY_FILE"], m.Env["ETCD_TRUSTED_CA_FILE"])
	if err != nil {
		return "", err
	}
	st.n.mu.Lock()
	esp := st.n.esp
	st.n.mu.Unlock()
	cluster := ""
	if st.me.WantID != 0 {
		cluster = fmt.Sprintf("%x", st.me.WantID)
	}
	api := &slots.API{
		ESP:     *esp,
		Want:    slots.Want{Cluster: cluster, Member: m.Name},
		Tries:   m.SlotTries,
		Allowed: append([]string{layout.AdminCN}, m.Names...),
		Reboot:  st.n.requestReboot,
		Waiting: st.n.trialWaiting,
		Stopped: st.n.stoppedWhy,
		Log:     logf,
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(m.IP, strconv.Itoa(layout.NodeAPIPort)))
	if err != nil {
		return "", fmt.Errorf("node API: %w", err)
	}
	// An update streams for seconds to minutes; a stalled one must not
	// hold the update lock (and the ESP writable) for ever.
	srv := &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 15 * time.Minute, WriteTimeout: 16 * time.Minute, IdleTimeout: 2 * time.Minute, TLSConfig: serverTLS}
	console.Go("node API", func() { srv.ServeTLS(ln, "", "") })
	st.slotTiming = m
	return fmt.Sprintf("mTLS on %s", ln.Addr()), nil
}

// watchTrial runs the trial's gate: the slot is marked good once the
// member has been a started, caught-up voter for the spec's goodAfter;
// if it is not within trialTimeout, the member records why and reboots,
// spending a try.
func watchTrial(st *state) (string, error) {
	m := st.slotTiming
	g := &slots.Gate{Check: st.me.CaughtUpVoter, GoodAfter: m.SlotGoodAfter, Timeout: m.SlotTrialTimeout, Every: time.Second}
	st.n.mu.Lock()
	st.n.gate = g
	esp := st.n.esp
	st.n.mu.Unlock()
	console.Go("trial", func() {
		err := g.Run(st.n.ctx)
		switch {
		case err == nil:
			if _, err := esp.MarkGood(); err != nil {
				logf("slots: %v", err)
				return
			}
			st.n.mu.Lock()
			st.n.trial = false
			st.n.mu.Unlock()
			writeSlotStatus(esp)
			logf("slots: slot %s marked good: a started, caught-up voter for %s", esp.Running, m.SlotGoodAfter)
		case st.n.ctx.Err() != nil:
		default:
			st.n.failTrial(err.Error())
		}
	})
	return fmt.Sprintf("marked good after %s as a caught-up voter, or a reboot after %s", m.SlotGoodAfter, m.SlotTrialTimeout), nil
}

func onTrial(st *state) bool {
	st.n.mu.Lock()
	defer st.n.mu.Unlock()
	return st.n.trial
}

// failTrial records why the slot on trial failed and reboots, which
// spends one of its tries; when they are spent systemd-boot boots the
// slot before it.
func (n *node) failTrial(why string) {
	n.mu.Lock()
	esp := n.esp
	n.mu.Unlock()
	logf("slots: slot %s failed its trial: %s; rebooting", esp.Running, why)
	if err := esp.RecordTrial(time.Now().UTC().Format(time.RFC3339) + " " + why); err != nil {
		logf("slots: %v", err)
	}
	n.requestReboot("the slot on trial failed")
}

func (n *node) trialWaiting() string {
	n.mu.Lock()
	g := n.gate
	n.mu.Unlock()
	if g == nil {
		return "etcd has not started yet"
	}
	return g.Waiting()
}

// stoppedWhy is why etcd does not run and will not until an operator
// acts, "" while it runs or may.
func (n *node) stoppedWhy() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stopWhy
}

// setStopped records why etcd stopped for good (stoppedWhy).
func (n *node) setStopped(why string) {
	n.mu.Lock()
	n.stopWhy = why
	n.mu.Unlock()
}

// writeSlotStatus keeps the slots' state where the metrics read it.
func writeSlotStatus(esp *slots.ESP) {
	s, err := esp.Status()
	if err == nil {
		var b []byte
		if b, err = json.Marshal(s); err == nil {
			if err = os.MkdirAll(filepath.Dir(layout.SlotStatusPath), 0o755); err == nil {
				err = os.WriteFile(layout.SlotStatusPath, b, 0o644)
			}
		}
	}
	if err != nil {
		logf("slots: %s: %v", layout.SlotStatusPath, err)
	}
}
