package restart

import "time"

// BlockedReason says why no restart will happen until a user acts.
type BlockedReason string

const (
	// BlockedManualStop: a user stopped (or is deleting) the instance. Set by
	// API stop and delete, cleared by API start.
	BlockedManualStop BlockedReason = "manual_stop"
	// BlockedMaxAttempts: MaxAttempts consecutive restarts did not produce a
	// stable run. Cleared by API start and by a policy change.
	BlockedMaxAttempts BlockedReason = "max_attempts_exceeded"
)

// Reason is why a restart was (or is to be) attempted.
type Reason string

const (
	// ReasonExitCode: the program exited (non-zero, or any code under always).
	ReasonExitCode Reason = "exit_code"
	// ReasonHealthCheck: the health check reported the instance unhealthy.
	ReasonHealthCheck Reason = "health_check_failed"
	// ReasonVMCrashed: the VM ended without a guest exit status that
	// hypeman did not ask for (VMM crash or kill, failed launch).
	ReasonVMCrashed Reason = "vm_crashed"
)

// Status is the restart bookkeeping persisted with an instance.
//
// JSON (snake_case, every field omitted when empty; the whole status is
// omitted by a parent field tagged `json:",omitzero"` when IsZero):
//
//	{"restarts":7,"attempts":2,"last_attempt_at":"…","next_attempt_at":"…",
//	 "blocked_reason":"manual_stop","last_reason":"exit_code"}
type Status struct {
	// Restarts counts every restart the controller made of this instance
	// in its whole life (a Kubernetes container's restartCount): it only
	// grows, one per start the controller attempted, and unlike Attempts
	// no stable run, API start, policy change or snapshot restore resets
	// it. Manual (API) starts are not restarts and do not count.
	Restarts int `json:"restarts,omitempty"`
	// Attempts is the number of consecutive restarts of the current series
	// (reset by a stable run, API start and policy changes).
	Attempts int `json:"attempts,omitempty"`
	// LastAttemptAt is when the controller last started the instance.
	LastAttemptAt time.Time `json:"last_attempt_at,omitzero"`
	// NextAttemptAt is when the next restart is due; zero when none is
	// scheduled. Persisted so a restarted daemon keeps the schedule.
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	// BlockedReason, when set, prevents any restart.
	BlockedReason BlockedReason `json:"blocked_reason,omitempty"`
	// LastReason is why the last (or the pending) restart happens.
	LastReason Reason `json:"last_reason,omitempty"`
}

// IsZero reports whether there is nothing to show.
func (s Status) IsZero() bool { return s == Status{} }

// MarkManualStop records an API stop or delete: it blocks restarts and
// cancels a pending one. The manager calls it under the instance lock
// before ending the VM (and for a Stopped instance in backoff, where it is
// the whole effect of the stop).
func (s *Status) MarkManualStop() {
	s.BlockedReason = BlockedManualStop
	s.NextAttemptAt = time.Time{}
}

// ClearForStart records an API start: the user takes over, so any block is
// lifted and a new series begins (history fields and Restarts are kept).
func (s *Status) ClearForStart() {
	s.BlockedReason = ""
	s.Attempts = 0
	s.NextAttemptAt = time.Time{}
}

// ForPolicyChange returns the status to persist when the policy changes
// from old to new: unchanged if they are Equal; otherwise Attempts and the
// pending schedule are reset and max_attempts_exceeded is lifted, while
// manual_stop is kept (only a start lifts it) and so are the history and
// Restarts. The
// controller then re-decides under the new policy (Controller.Refresh).
func (s Status) ForPolicyChange(old, new Policy) Status {
	if old.Equal(new) {
		return s
	}
	out := Status{Restarts: s.Restarts, LastAttemptAt: s.LastAttemptAt, LastReason: s.LastReason}
	if s.BlockedReason == BlockedManualStop {
		out.BlockedReason = BlockedManualStop
	}
	return out
}

// Cleared is the status of an instance whose history starts over (a
// snapshot restore): everything reset but the lifetime Restarts count.
func (s Status) Cleared() Status { return Status{Restarts: s.Restarts} }

// recordAttempt is applied by the start check right before the manager
// starts the instance: one more restart (counted whether or not the start
// then succeeds, as Attempts is).
func (s *Status) recordAttempt(d Decision, now time.Time) {
	s.Restarts++
	s.Attempts = d.Attempt
	s.LastAttemptAt = now
	s.NextAttemptAt = time.Time{}
	s.LastReason = d.Reason
}
