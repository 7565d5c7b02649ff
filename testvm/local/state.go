package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"etcdimg/internal/layout"
	"etcdimg/internal/outdir"
	"etcdimg/testvm"
)

// StateFile is a local cluster's record in its run directory: what
// `etcdimg status`, `health`, `etcdctl`, `stop`, `start`, `replace`,
// `roll` and `down` read. Every path in it is absolute, so that any
// command from any working directory finds the same files and processes.
const StateFile = outdir.StateFile

// lockFile, in the run directory, is held (flock) by every command that
// changes a local cluster, so that two commands never race on its state.
const lockFile = "lock"

// MemberState is one member of a local cluster.
type MemberState struct {
	Name    string         `json:"name"`
	IP      string         `json:"ip"`
	QEMU    testvm.Process `json:"qemu"` // PID 0 when stopped
	Client  int            `json:"clientPort"`
	Peer    int            `json:"peerPort,omitempty"`
	Metrics int            `json:"metricsPort"`
	// NodeMetrics, Backup and NodeAPI forward the appliance's own
	// metrics, its backups API and its node API (layout.NodeMetricsPort,
	// layout.BackupPort, layout.NodeAPIPort).
	NodeMetrics int    `json:"nodeMetricsPort,omitempty"`
	Backup      int    `json:"backupPort,omitempty"`
	NodeAPI     int    `json:"node_api,omitempty"`
	Console     string `json:"console"`
	QMP         string `json:"qmp"`
	// Image is the member's built image; OSDisk, the disk it boots from
	// and writes, a copy of Image (see prepareOSDisk). A state file
	// written before members had OS disks of their own has none: the
	// member's next start makes it.
	Image    string `json:"image"`
	OSDisk   string `json:"os_disk,omitempty"`
	DataDisk string `json:"dataDisk"`
}

// Running reports whether the member's QEMU is the recorded process.
func (m MemberState) Running() bool { return m.QEMU.Running() }

// State is a local cluster: the LAN, its gateway and the members.
type State struct {
	RunDir       string         `json:"runDir"`
	DiskDir      string         `json:"diskDir"`
	Switch       testvm.Process `json:"switch"`
	Gateway      testvm.Process `json:"gateway"`
	SwitchSocket string         `json:"switchSocket"`
	Accel        string         `json:"accel"`
	MemoryMB     int            `json:"memoryMB"`
	DataSize     int64          `json:"dataSize"`
	Started      time.Time      `json:"started"`
	Members      []MemberState  `json:"members"`
	// HostServices are the host's services on the LAN: LAN address →
	// host address.
	HostServices map[string]string `json:"hostServices,omitempty"`
}

// ErrNotRunning is returned by LoadState when no cluster is recorded.
var ErrNotRunning = errors.New("no cluster is running here (no " + StateFile + ")")

// LoadState reads the state file of runDir.
func LoadState(runDir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(runDir, StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotRunning
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("cluster: %s: %w", StateFile, err)
	}
	return &st, nil
}

// save writes the state file through a temporary file of its own (never
// a fixed name another process could share) and a rename.
func (st *State) save() error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(st.RunDir, "."+StateFile+".tmp-*")
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("cluster: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(st.RunDir, StateFile)); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	return nil
}

// HostPort is where the host reaches the member's guest port, or 0.
func (m MemberState) HostPort(guest int) int {
	switch guest {
	case layout.ClientPort:
		return m.Client
	case layout.MetricsPort:
		return m.Metrics
	case layout.NodeMetricsPort:
		return m.NodeMetrics
	case layout.BackupPort:
		return m.Backup
	case layout.NodeAPIPort:
		return m.NodeAPI
	}
	return 0
}

// Member returns the member called name.
func (st *State) Member(name string) (*MemberState, error) {
	for i := range st.Members {
		if st.Members[i].Name == name {
			return &st.Members[i], nil
		}
	}
	var names []string
	for _, m := range st.Members {
		names = append(names, m.Name)
	}
	return nil, fmt.Errorf("no member %q in this cluster; members: %s", name, strings.Join(names, ", "))
}

// Running reports the members whose QEMU is alive.
func (st *State) Running() []MemberState {
	var up []MemberState
	for _, m := range st.Members {
		if m.Running() {
			up = append(up, m)
		}
	}
	return up
}

// Table prints the cluster as `etcdimg status` shows it: when and how it
// started, whether its LAN runs, and a row per member (its QEMU, ports
// and console). It returns how many members are not running.
func (st *State) Table(w io.Writer) (stopped int) {
	lan := "up"
	if !st.LANUp() {
		lan = "DOWN"
	}
	fmt.Fprintf(w, "started %s, %s, %d MiB per member, LAN switch pid %d (%s)\n", st.Started.Format(time.RFC3339), st.Accel, st.MemoryMB, st.Switch.PID, lan)
	const row = "%-8s %-15s %-8s %-8s %-24s %-24s %s\n"
	fmt.Fprintf(w, row, "MEMBER", "IP", "PID", "STATE", "CLIENT", "METRICS", "CONSOLE")
	for _, m := range st.Members {
		state, pid := "running", strconv.Itoa(m.QEMU.PID)
		if !m.Running() {
			state, pid, stopped = "stopped", "-", stopped+1
		}
		fmt.Fprintf(w, row, m.Name, m.IP, pid, state,
			fmt.Sprintf("https://127.0.0.1:%d", m.Client), fmt.Sprintf("http://127.0.0.1:%d", m.Metrics), m.Console)
	}
	return stopped
}

// Stopped returns the first member whose console says it stopped its
// boot (layout.ConsoleStopped: a member that found a reason not to go on, such
// as a data disk it must not format, prints why and waits to be powered
// off), with the reason; ok is false while none has. It reads the last
// 64 KiB of each console.
func (st *State) Stopped() (name, why string, ok bool) {
	for _, m := range st.Members {
		if why, ok := stoppedLine(m.Console); ok {
			return m.Name, why, true
		}
	}
	return "", "", false
}

func stoppedLine(path string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	const tail = 64 << 10
	var off int64
	if fi, err := f.Stat(); err == nil && fi.Size() > tail {
		off = fi.Size() - tail
	}
	b := make([]byte, tail)
	n, _ := f.ReadAt(b, off)
	for _, line := range strings.Split(string(b[:n]), "\n") {
		if _, why, found := strings.Cut(line, layout.ConsoleStopped); found {
			return strings.TrimSpace(why), true
		}
	}
	return "", false
}

// Lock is an exclusive hold on a run directory.
type Lock struct{ f *os.File }

// LockRunDir takes the run directory's lock, creating the directory if
// needed. It does not wait: a second command on the same directory is
// refused at once, naming the holder.
func LockRunDir(runDir string) (*Lock, error) {
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	path := filepath.Join(runDir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another etcdimg command (%s) is changing the cluster in %s; wait for it to finish", strings.TrimSpace(string(holder)), filepath.Dir(runDir))
		}
		return nil, fmt.Errorf("cluster: lock %s: %w", path, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte("pid "+strconv.Itoa(os.Getpid())+"\n"), 0)
	return &Lock{f: f}, nil
}

// Unlock releases the lock.
func (l *Lock) Unlock() {
	if l == nil || l.f == nil {
		return
	}
	l.f.Truncate(0)
	unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	l.f.Close()
	l.f = nil
}
