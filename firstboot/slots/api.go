package slots

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"

	"etcdimg/internal/layout"
	"etcdimg/internal/slot"
)

// MaxSlot bounds an update: the node reads no more than this.
const MaxSlot = 512 << 20

// API serves the node API: the slots' state to the admin and the
// members, an update into the inactive slot, and the reboot.
type API struct {
	ESP   ESP
	Want  Want
	Tries int
	// Allowed are the certificate CNs served: the admin's and the
	// members'. Every other certificate of the CA gets 403.
	Allowed []string
	// Reboot asks PID 1 to stop etcd and reboot.
	Reboot func(reason string)
	// Waiting says what a slot on trial waits for ("" when none is).
	Waiting func() string
	// Stopped says why etcd does not run and will not until an operator
	// acts ("" when it runs, or may).
	Stopped func() string
	Log     func(format string, args ...any)

	mu sync.Mutex // one update at a time
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	cn, ok := verifiedCN(r)
	if !ok || !slices.Contains(a.Allowed, cn) {
		http.Error(w, fmt.Sprintf("forbidden: the node API serves the admin certificate (CN %s) and the members' only, not CN %q", layout.AdminCN, cn), http.StatusForbidden)
		return
	}
	switch {
	case r.URL.Path == slot.APIStatus && r.Method == http.MethodGet:
		st, err := a.status()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, http.StatusOK, st)
	case r.URL.Path == slot.APIUpdate && r.Method == http.MethodPut:
		a.update(w, r, cn)
	case r.URL.Path == slot.APIReboot && r.Method == http.MethodPost:
		if cn != layout.AdminCN {
			http.Error(w, "forbidden: only the admin reboots a member", http.StatusForbidden)
			return
		}
		a.Log("node API: reboot asked by %s (%s)", cn, r.RemoteAddr)
		writeJSON(w, http.StatusAccepted, map[string]string{"reboot": "started"})
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		a.Reboot("reboot asked over the node API by " + cn)
	default:
		http.NotFound(w, r)
	}
}

func (a *API) status() (slot.Status, error) {
	st, err := a.ESP.Status()
	if err != nil {
		return st, err
	}
	if st.Member == "" {
		st.Member = a.Want.Member
	}
	if a.Waiting != nil && st.Running.State == slot.StateTrial {
		st.Waiting = a.Waiting()
	}
	if a.Stopped != nil {
		st.Stopped = a.Stopped()
	}
	return st, nil
}

func (a *API) update(w http.ResponseWriter, r *http.Request, cn string) {
	if cn != layout.AdminCN {
		http.Error(w, "forbidden: only the admin updates a member", http.StatusForbidden)
		return
	}
	if !a.mu.TryLock() {
		http.Error(w, "an update is being written already", http.StatusConflict)
		return
	}
	defer a.mu.Unlock()
	body := http.MaxBytesReader(w, r.Body, MaxSlot+1<<20)
	m, err := a.ESP.Install(body, a.Want, a.Tries, MaxSlot)
	switch {
	case errors.Is(err, ErrRunning):
		writeJSON(w, http.StatusOK, map[string]string{"slot": m.ID, "state": "running"})
	case err != nil:
		a.Log("node API: update from %s refused: %v", r.RemoteAddr, err)
		code := http.StatusUnprocessableEntity
		var pe *os.PathError
		if errors.As(err, &pe) {
			code = http.StatusInternalServerError
		}
		http.Error(w, strings.TrimPrefix(err.Error(), "slots: "), code)
	default:
		a.Log("node API: slot %s staged (etcd %s, kernel %s, %d MiB) by %s; it boots on the next reboot, with %d tries", m.ID, m.Etcd, m.Kernel, m.Size()>>20, cn, a.Tries)
		writeJSON(w, http.StatusOK, map[string]string{"slot": m.ID, "state": slot.StateStaged})
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// verifiedCN is the CN of the client certificate TLS verified, if any.
func verifiedCN(r *http.Request) (string, bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return "", false
	}
	return r.TLS.VerifiedChains[0][0].Subject.CommonName, true
}
