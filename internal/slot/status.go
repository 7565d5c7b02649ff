package slot

// The node API's paths (layout.NodeAPIPort).
const (
	// APIStatus answers GET with the node's Status.
	APIStatus = "/v1/slots"
	// APIUpdate takes PUT of a bundle into the inactive slot.
	APIUpdate = "/v1/slots/next"
	// APIReboot takes POST: the member stops etcd and reboots, into a
	// staged slot if there is one.
	APIReboot = "/v1/reboot"
)

// The states of a slot.
const (
	// Good: marked good, or built so: systemd-boot boots it when no
	// newer slot has tries left.
	StateGood = "good"
	// Trial: running, or booted, on trial: not yet marked good.
	StateTrial = "trial"
	// Staged: installed and waiting for the reboot into it.
	StateStaged = "staged"
	// Bad: its tries are spent: systemd-boot boots it only when nothing
	// else is left.
	StateBad = "bad"
)

// SlotState is one slot as the node sees it.
type SlotState struct {
	ID        string    `json:"id"`
	Gen       int       `json:"gen"`
	State     string    `json:"state"`
	TriesLeft int       `json:"tries_left,omitempty"`
	TriesDone int       `json:"tries_done,omitempty"`
	Digest    string    `json:"digest,omitempty"`
	Manifest  *Manifest `json:"manifest,omitempty"`
	// Trial is what the slot's last trial boot said on its way down.
	Trial string `json:"trial,omitempty"`
}

// Status is what a node says about its slots.
type Status struct {
	Member  string     `json:"member"`
	Running SlotState  `json:"running"`
	Other   *SlotState `json:"other,omitempty"`
	// RolledBack is set when the member runs an older slot than one whose
	// tries are spent: the update it came back from.
	RolledBack *SlotState `json:"rolled_back,omitempty"`
	// Trial, while the running slot is on trial: how long it has stayed
	// good so far and what it waits for.
	Waiting string `json:"waiting,omitempty"`
	// Stopped, when set, is why this member's etcd does not run and will
	// not until an operator acts: its boot stopped (a refused data disk,
	// its data found damaged) or PID 1 stopped etcd for good.
	Stopped string `json:"stopped,omitempty"`
}
