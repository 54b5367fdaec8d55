package restart

import (
	"fmt"
	"math"
	"time"

	"hypeman/internal/instances/state"
)

// JitterFraction is the largest share of a delay that jitter removes.
//
// The jitter rule: the un-jittered delay of attempt n is
// base(n) = min(Backoff·2^(n-1), MaxBackoff); the delay used is
// base(n) − base(n)·JitterFraction·rnd for rnd in [0,1), i.e. it lies in
// (0.8·base(n), base(n)]. Jitter only ever shortens, so the delay never
// exceeds MaxBackoff; it never drops below 80% of base(n) (hence never below
// 0.8·Backoff), and since base doubles, delays still strictly increase
// until the cap. With MaxBackoff == Backoff (a fixed delay) there is no
// jitter at all, so hypeman's fixed-delay behaviour is reproduced exactly.
const JitterFraction = 0.2

// Delay returns the backoff before restart attempt number attempt (1 for
// the first restart of a series; values below 1 count as 1), with the
// jitter draw rnd in [0,1) (values outside are clamped). Zero or invalid
// durations in p fall back to the defaults.
func Delay(p Policy, attempt int, rnd float64) time.Duration {
	backoff, maxB := p.Backoff, p.MaxBackoff
	if backoff <= 0 {
		backoff = DefaultBackoff
	}
	if maxB <= 0 {
		maxB = DefaultMaxBackoff
	}
	if maxB < backoff {
		maxB = backoff
	}
	if attempt < 1 {
		attempt = 1
	}
	d := backoff
	for i := 1; i < attempt && d < maxB; i++ {
		if d > maxB/2 { // doubling would pass the cap (or overflow)
			d = maxB
			break
		}
		d *= 2
	}
	d = min(d, maxB)
	if maxB == backoff {
		return d
	}
	switch {
	case math.IsNaN(rnd) || rnd < 0:
		rnd = 0
	case rnd >= 1:
		rnd = math.Nextafter(1, 0)
	}
	return d - time.Duration(float64(d)*JitterFraction*rnd)
}

// ExitInfo is how the instance's last boot ended, as the manager recorded
// it. Exactly one of the cases applies; the manager fills the flags in this
// order of precedence: StoppedByHypeman, LaunchFailed, Code, VMCrashed.
type ExitInfo struct {
	// StoppedByHypeman: hypeman ended the VM on purpose (API stop or delete,
	// a health restart). The exit code the guest then reports (e.g. 143
	// after SIGTERM) is not a failure; whether to restart is decided by
	// Status alone (manual_stop blocks, a health stop has NextAttemptAt).
	StoppedByHypeman bool
	// LaunchFailed: the last start did not get a VM running (restarted under
	// on_failure and always, reason vm_crashed).
	LaunchFailed bool
	// Code is the exit status the guest reported (nil: none). A program
	// killed by a signal is reported by the guest init as 128+signal.
	Code *int
	// VMCrashed: the VM ended without a guest exit status and hypeman did
	// not end it (VMM crash or kill, guest kernel panic).
	VMCrashed bool
	// Message is the exit message, for logs.
	Message string
}

// Action is what Decide asks for.
type Action string

const (
	// ActionNone: nothing to do (not Stopped, policy never, exit does not
	// qualify, or no exit observed yet).
	ActionNone Action = "none"
	// ActionSchedule: restart at Decision.At.
	ActionSchedule Action = "schedule"
	// ActionBlock: do not restart; record Decision.Blocked.
	ActionBlock Action = "block"
)

// DecideInput is everything a restart decision depends on.
type DecideInput struct {
	Policy Policy
	Status Status
	State  state.State
	Exit   ExitInfo
	// StartedAt is when the last (or current) boot started; zero if never.
	StartedAt time.Time
	// StoppedAt is when the last boot ended; zero while running.
	StoppedAt time.Time
	// HealthFailed asks about a Running instance whose health check just
	// reported unhealthy (instead of about a Stopped one).
	HealthFailed bool
	Now          time.Time
	// Rand is the jitter draw in [0,1).
	Rand float64
}

// Decision is Decide's answer.
type Decision struct {
	Action Action
	// At is when the restart is due (ActionSchedule).
	At time.Time
	// Attempt is the number of the scheduled attempt within its series
	// (1-based; ActionSchedule).
	Attempt int
	// Reason of the scheduled restart (ActionSchedule).
	Reason Reason
	// Blocked is the reason for ActionBlock.
	Blocked BlockedReason
	// ResetAttempts: the last run was stable, Status.Attempts restarts at 0.
	ResetAttempts bool
	// Why explains the decision, for logs.
	Why string
}

// Decide applies the restart policy. Rules, in order:
//
//   - policy never → none.
//   - Only a Stopped instance is restarted (a Running one with HealthFailed
//     is stopped first, see below). Standby, Unknown, Paused, Shutdown and
//     every other state → none: they are never touched.
//   - A blocked status stays blocked (manual_stop, max_attempts_exceeded).
//   - A persisted NextAttemptAt is kept as is: the schedule survives
//     re-evaluation and daemon restarts and is not re-jittered.
//   - Otherwise the exit must qualify: after a stop by hypeman nothing
//     qualifies (a health stop always has NextAttemptAt); a failed launch
//     or a VM crash qualifies (vm_crashed); a guest exit code qualifies when
//     non-zero, or under always any code (exit_code); no exit observed →
//     none. HealthFailed qualifies under on_failure and always
//     (health_check_failed).
//   - A run that lasted at least StableAfter (StoppedAt−StartedAt, or
//     Now−StartedAt for HealthFailed) resets Attempts to 0.
//   - MaxAttempts > 0 and Attempts ≥ MaxAttempts → block
//     max_attempts_exceeded.
//   - Otherwise schedule attempt Attempts+1 at StoppedAt (Now for
//     HealthFailed, or when StoppedAt is unknown) + Delay(attempt).
func Decide(in DecideInput) Decision {
	p := in.Policy
	if p.Kind() == Never {
		return none("restart policy is never")
	}
	if in.HealthFailed {
		if in.State != state.Running {
			return none(fmt.Sprintf("health failure reported but the instance is %s", in.State))
		}
	} else if in.State != state.Stopped {
		return none(fmt.Sprintf("instance is %s", in.State))
	}
	st := in.Status
	if st.BlockedReason != "" {
		return Decision{Action: ActionBlock, Blocked: st.BlockedReason, Why: "restarts blocked: " + string(st.BlockedReason)}
	}
	if !in.HealthFailed && !st.NextAttemptAt.IsZero() {
		reason := st.LastReason
		if reason == "" {
			reason, _ = classify(p, in.Exit)
		}
		return Decision{Action: ActionSchedule, At: st.NextAttemptAt, Attempt: st.Attempts + 1, Reason: reason,
			Why: "restart already scheduled"}
	}

	var reason Reason
	runEnd := in.StoppedAt
	if in.HealthFailed {
		reason, runEnd = ReasonHealthCheck, in.Now
	} else {
		var why string
		if reason, why = classify(p, in.Exit); reason == "" {
			return none(why)
		}
	}
	if runEnd.IsZero() {
		runEnd = in.Now
	}

	d := Decision{Reason: reason}
	attempts := st.Attempts
	if attempts > 0 && !in.StartedAt.IsZero() && runEnd.Sub(in.StartedAt) >= p.StableAfter && p.StableAfter > 0 {
		attempts, d.ResetAttempts = 0, true
	}
	if p.MaxAttempts > 0 && attempts >= p.MaxAttempts {
		return Decision{Action: ActionBlock, Blocked: BlockedMaxAttempts, Reason: reason, ResetAttempts: d.ResetAttempts,
			Why: fmt.Sprintf("%d consecutive restarts reached max_attempts %d", attempts, p.MaxAttempts)}
	}
	d.Action = ActionSchedule
	d.Attempt = attempts + 1
	d.At = runEnd.Add(Delay(p, d.Attempt, in.Rand))
	d.Why = fmt.Sprintf("restart attempt %d (%s)", d.Attempt, reason)
	return d
}

// classify says whether an exit qualifies for a restart under p, and why.
func classify(p Policy, e ExitInfo) (Reason, string) {
	switch {
	case e.StoppedByHypeman:
		return "", "stopped by hypeman"
	case e.LaunchFailed:
		return ReasonVMCrashed, ""
	case e.Code != nil:
		if *e.Code == 0 && p.Kind() != Always {
			return "", "program exited with code 0 under on_failure"
		}
		return ReasonExitCode, ""
	case e.VMCrashed:
		return ReasonVMCrashed, ""
	}
	return "", "no exit observed"
}

func none(why string) Decision { return Decision{Action: ActionNone, Why: why} }

// apply records a schedule or block decision in st (what the controller
// persists after deciding).
func (d Decision) apply(st *Status) {
	if d.ResetAttempts {
		st.Attempts = 0
	}
	switch d.Action {
	case ActionSchedule:
		st.NextAttemptAt = d.At
		st.LastReason = d.Reason
	case ActionBlock:
		st.BlockedReason = d.Blocked
		st.NextAttemptAt = time.Time{}
	}
}

// needsWrite reports whether applying d would change st.
func (d Decision) needsWrite(st Status) bool {
	c := st
	d.apply(&c)
	return c != st
}

// Snapshot is one instance as the restart controller sees it.
type Snapshot struct {
	ID     string
	State  state.State
	Policy Policy
	Status Status
	Exit   ExitInfo
	// StartedAt / StoppedAt of the last (or current) boot; zero if none.
	StartedAt time.Time
	StoppedAt time.Time
}

// Input builds the DecideInput for s.
func (s Snapshot) Input(now time.Time, rnd float64, healthFailed bool) DecideInput {
	return DecideInput{
		Policy: s.Policy, Status: s.Status, State: s.State, Exit: s.Exit,
		StartedAt: s.StartedAt, StoppedAt: s.StoppedAt, HealthFailed: healthFailed, Now: now, Rand: rnd,
	}
}

// Pending is the wait endpoint's predicate: whether the restart policy
// will bring s back by itself, so that a terminal state is not final. It is
// computed from the persisted policy, status and exit information, so it
// is right even before the controller has processed the Stopped event.
//
//   - never or blocked → false.
//   - Stopped → Decide schedules a restart.
//   - Shutdown → true: the VMM is about to exit; the waiter re-decides on
//     the Stopped event that follows, with the exit information.
//   - Running/Initializing with NextAttemptAt set → true: a health restart
//     is stopping it.
//   - anything else → false.
func Pending(s Snapshot, now time.Time) bool {
	if s.Policy.Kind() == Never || s.Status.BlockedReason != "" {
		return false
	}
	switch s.State {
	case state.Stopped:
		return Decide(s.Input(now, 0, false)).Action == ActionSchedule
	case state.Shutdown:
		return true
	case state.Running, state.Initializing:
		return !s.Status.NextAttemptAt.IsZero()
	}
	return false
}
