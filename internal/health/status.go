package health

import "time"

// State is the health verdict shown as health_status.status.
type State string

const (
	// Disabled: no health check is configured.
	Disabled State = "disabled"
	// Starting: the instance runs but no verdict yet (start period, or
	// fewer than the threshold of results).
	Starting State = "starting"
	// Healthy: SuccessThreshold consecutive successes.
	Healthy State = "healthy"
	// Unhealthy: FailureThreshold consecutive counted failures.
	Unhealthy State = "unhealthy"
	// Unknown: a check is configured but the instance is not Running, so
	// nothing is being checked.
	Unknown State = "unknown"
)

// Status is the health bookkeeping persisted with an instance.
//
// JSON (snake_case; times and last_error omitted when empty):
//
//	{"status":"healthy","consecutive_successes":4,"consecutive_failures":0,
//	 "last_check_at":"…","last_success_at":"…","last_failure_at":"…","last_error":"…"}
type Status struct {
	Status               State     `json:"status"`
	ConsecutiveSuccesses int       `json:"consecutive_successes"`
	ConsecutiveFailures  int       `json:"consecutive_failures"`
	LastCheckAt          time.Time `json:"last_check_at,omitzero"`
	LastSuccessAt        time.Time `json:"last_success_at,omitzero"`
	LastFailureAt        time.Time `json:"last_failure_at,omitzero"`
	// LastError describes the last failure (kept after later successes;
	// compare LastFailureAt with LastSuccessAt).
	LastError string `json:"last_error,omitempty"`
}

// IsZero reports whether the status was never set.
func (s Status) IsZero() bool { return s == Status{} }

// Result is the outcome of one probe.
type Result struct {
	OK bool
	// Err describes a failure ("HTTP status 503, want 200", "timed out
	// after 2s", "connection refused"…).
	Err string
}

// Initial is the status of an instance whose check is c and that is not
// running: disabled without a check, unknown with one.
func Initial(c Check) Status {
	if c.IsZero() {
		return Status{Status: Disabled}
	}
	return Status{Status: Unknown}
}

// inBoot reports whether s already describes the boot that started at
// runningSince (a verdict reached in that boot).
func inBoot(s Status, runningSince time.Time) bool {
	switch s.Status {
	case Starting, Healthy, Unhealthy:
	default:
		return false
	}
	return !s.LastCheckAt.Before(runningSince)
}

// Started is the status when checking begins for the boot that started at
// runningSince: a status from that same boot is kept (a daemon restart or
// a controller resync must not reset the counters), anything else becomes
// a fresh "starting".
func Started(s Status, runningSince time.Time) Status {
	if inBoot(s, runningSince) {
		return s
	}
	return fresh(s, runningSince)
}

// fresh is a new "starting" status for the boot that started at
// runningSince. History from that same boot (e.g. before a pause) is kept,
// so an earlier success of the boot still ends its start period.
func fresh(prev Status, runningSince time.Time) Status {
	s := Status{Status: Starting}
	if prev.Status != Disabled && !prev.LastCheckAt.IsZero() && !prev.LastCheckAt.Before(runningSince) {
		s.LastCheckAt, s.LastSuccessAt, s.LastFailureAt, s.LastError =
			prev.LastCheckAt, prev.LastSuccessAt, prev.LastFailureAt, prev.LastError
	}
	return s
}

// Stopped is the status once the instance has left Running: unknown, with
// the counters cleared and the history (times, last error) kept.
func Stopped(s Status) Status {
	s.Status = Unknown
	s.ConsecutiveSuccesses, s.ConsecutiveFailures = 0, 0
	return s
}

// ForCheckChange is the status to persist when the check changes from old
// to new on an instance that is (running) or is not running.
func ForCheckChange(old, new Check, s Status, running bool) Status {
	switch {
	case new.IsZero():
		return Status{Status: Disabled}
	case old.Equal(new) && !s.IsZero():
		return s
	case running:
		return Status{Status: Starting}
	}
	return Status{Status: Unknown}
}

// Apply is the health state machine: the status after probe result res of
// check c at now, for the boot that started at runningSince.
//
//   - A status from an earlier boot (or unknown/disabled) starts over as
//     starting with zero counters; history (times, last error) is kept
//     only when it belongs to this boot (e.g. resumed after a pause).
//   - The start period is [runningSince, runningSince+StartPeriod) and
//     ends early at the first success of the boot. A failure inside it is
//     recorded (time, error) but not counted: the counters do not move and
//     the status stays starting.
//   - A success counts a consecutive success and resets the failures;
//     SuccessThreshold of them make the status healthy (from starting or
//     unhealthy).
//   - A counted failure resets the successes; FailureThreshold consecutive
//     ones make the status unhealthy (from starting or healthy). Below the
//     threshold the status is unchanged.
func Apply(c Check, s Status, res Result, now, runningSince time.Time) Status {
	if !inBoot(s, runningSince) {
		s = fresh(s, runningSince)
	}
	successThreshold, failureThreshold := max(c.SuccessThreshold, 1), max(c.FailureThreshold, 1)
	startOver := !now.Before(runningSince.Add(c.StartPeriod)) ||
		(!s.LastSuccessAt.IsZero() && !s.LastSuccessAt.Before(runningSince))
	s.LastCheckAt = now
	if res.OK {
		s.LastSuccessAt = now
		s.ConsecutiveSuccesses++
		s.ConsecutiveFailures = 0
		if s.ConsecutiveSuccesses >= successThreshold {
			s.Status = Healthy
		}
		return s
	}
	s.LastFailureAt = now
	s.LastError = res.Err
	if s.LastError == "" {
		s.LastError = "check failed"
	}
	if !startOver {
		s.ConsecutiveSuccesses = 0
		return s // start period: not counted
	}
	s.ConsecutiveSuccesses = 0
	s.ConsecutiveFailures++
	if s.ConsecutiveFailures >= failureThreshold {
		s.Status = Unhealthy
	}
	return s
}
