package restart_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"hypeman/internal/instances/state"
	"hypeman/internal/restart"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func code(c int) *int { return &c }

func TestDelaySequence(t *testing.T) {
	p := restart.DefaultPolicy(restart.OnFailure)
	want := []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second,
		80 * time.Second, 160 * time.Second, 300 * time.Second, 300 * time.Second, 300 * time.Second}
	for i, w := range want {
		if got := restart.Delay(p, i+1, 0); got != w {
			t.Errorf("Delay(attempt %d) = %s, want %s", i+1, got, w)
		}
	}
	// Attempts below 1 count as the first; huge attempts neither overflow
	// nor pass the cap.
	if got := restart.Delay(p, 0, 0); got != 5*time.Second {
		t.Errorf("Delay(0) = %s", got)
	}
	for _, n := range []int{63, 64, 100, math.MaxInt32, math.MaxInt} {
		if got := restart.Delay(p, n, 0); got != 5*time.Minute {
			t.Errorf("Delay(%d) = %s, want the cap", n, got)
		}
	}
	huge := restart.Policy{Policy: restart.Always, Backoff: time.Duration(math.MaxInt64 / 3), MaxBackoff: math.MaxInt64, StableAfter: time.Hour}
	if got := restart.Delay(huge, 5, 0); got != math.MaxInt64 {
		t.Errorf("Delay near MaxInt64 = %d, want the cap", got)
	}
	// Fixed delay (max_backoff == backoff): exact, no jitter.
	fixed := restart.DefaultPolicy(restart.Always)
	fixed.MaxBackoff = fixed.Backoff
	for _, r := range []float64{0, 0.5, 0.999} {
		for n := 1; n < 5; n++ {
			if got := restart.Delay(fixed, n, r); got != 5*time.Second {
				t.Errorf("fixed Delay(%d, %v) = %s, want 5s", n, r, got)
			}
		}
	}
}

// TestDelayJitterBounds is a property test over many draws: the delay is in
// (0.8·base, base], never above MaxBackoff, never below 0.8·Backoff, and
// strictly increasing with the attempt until the cap whatever the draws.
func TestDelayJitterBounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	policies := []restart.Policy{
		restart.DefaultPolicy(restart.OnFailure),
		{Policy: restart.Always, Backoff: time.Millisecond, MaxBackoff: 7 * time.Millisecond, StableAfter: time.Second},
		{Policy: restart.Always, Backoff: 3 * time.Second, MaxBackoff: 4 * time.Second, StableAfter: time.Second},
		{Policy: restart.Always, Backoff: time.Nanosecond, MaxBackoff: time.Hour, StableAfter: time.Second},
	}
	draws := []float64{0, 1e-12, 0.5, math.Nextafter(1, 0), 1, 1.5, -0.3, math.NaN()}
	for range 20000 {
		draws = append(draws, rng.Float64())
	}
	for _, p := range policies {
		for n := 1; n <= 40; n++ {
			base := restart.Delay(p, n, 0)
			lo := time.Duration(float64(base) * (1 - restart.JitterFraction))
			for _, r := range draws {
				d := restart.Delay(p, n, r)
				if d > p.MaxBackoff || d > base {
					t.Fatalf("%+v attempt %d rnd %v: %s above base %s / max %s", p, n, r, d, base, p.MaxBackoff)
				}
				if d < lo || d < time.Duration(float64(p.Backoff)*(1-restart.JitterFraction)) || d <= 0 {
					t.Fatalf("%+v attempt %d rnd %v: %s below floor %s", p, n, r, d, lo)
				}
				if next := restart.Delay(p, n+1, 0); base < p.MaxBackoff && next < p.MaxBackoff {
					// The smallest next delay beats the largest current one.
					minNext := restart.Delay(p, n+1, math.Nextafter(1, 0))
					if minNext <= d {
						t.Fatalf("%+v: attempt %d delay %s not above attempt %d delay %s", p, n+1, minNext, n, d)
					}
				}
			}
		}
	}
}

func TestDecide(t *testing.T) {
	onf := restart.DefaultPolicy(restart.OnFailure)
	always := restart.DefaultPolicy(restart.Always)
	max3 := onf
	max3.MaxAttempts = 3
	started, stopped := t0.Add(-time.Minute), t0.Add(-time.Second)
	base := restart.DecideInput{Policy: onf, State: state.Stopped, StartedAt: started, StoppedAt: stopped, Now: t0}

	type want struct {
		action  restart.Action
		reason  restart.Reason
		blocked restart.BlockedReason
		attempt int
		at      time.Time
		reset   bool
	}
	sched := func(r restart.Reason, attempt int, at time.Time) want {
		return want{action: restart.ActionSchedule, reason: r, attempt: attempt, at: at}
	}
	noneW := want{action: restart.ActionNone}
	cases := []struct {
		name string
		mod  func(*restart.DecideInput)
		want want
	}{
		{"never", func(in *restart.DecideInput) { in.Policy = restart.Policy{}; in.Exit.Code = code(1) }, noneW},
		{"on_failure exit 1", func(in *restart.DecideInput) { in.Exit.Code = code(1) }, sched(restart.ReasonExitCode, 1, stopped.Add(5*time.Second))},
		{"on_failure killed (137)", func(in *restart.DecideInput) { in.Exit.Code = code(137) }, sched(restart.ReasonExitCode, 1, stopped.Add(5*time.Second))},
		{"on_failure exit 0", func(in *restart.DecideInput) { in.Exit.Code = code(0) }, noneW},
		{"always exit 0", func(in *restart.DecideInput) { in.Policy = always; in.Exit.Code = code(0) }, sched(restart.ReasonExitCode, 1, stopped.Add(5*time.Second))},
		{"on_failure vm crashed", func(in *restart.DecideInput) { in.Exit.VMCrashed = true }, sched(restart.ReasonVMCrashed, 1, stopped.Add(5*time.Second))},
		{"on_failure launch failed", func(in *restart.DecideInput) { in.Exit.LaunchFailed = true }, sched(restart.ReasonVMCrashed, 1, stopped.Add(5*time.Second))},
		{"no exit observed", func(in *restart.DecideInput) {}, noneW},
		{"stopped by hypeman, code 143", func(in *restart.DecideInput) {
			in.Policy = always
			in.Exit = restart.ExitInfo{StoppedByHypeman: true, Code: code(143)}
		}, noneW},
		{"manual stop blocks", func(in *restart.DecideInput) {
			in.Exit = restart.ExitInfo{StoppedByHypeman: true, Code: code(143)}
			in.Status.BlockedReason = restart.BlockedManualStop
		}, want{action: restart.ActionBlock, blocked: restart.BlockedManualStop}},
		{"manual stop blocks even a failure exit", func(in *restart.DecideInput) {
			in.Exit.Code = code(1)
			in.Status.BlockedReason = restart.BlockedManualStop
		}, want{action: restart.ActionBlock, blocked: restart.BlockedManualStop}},
		{"third attempt", func(in *restart.DecideInput) { in.Exit.Code = code(1); in.Status.Attempts = 2 }, sched(restart.ReasonExitCode, 3, stopped.Add(20*time.Second))},
		{"max_attempts reached", func(in *restart.DecideInput) {
			in.Policy = max3
			in.Exit.Code = code(1)
			in.Status.Attempts = 3
		}, want{action: restart.ActionBlock, blocked: restart.BlockedMaxAttempts, reason: restart.ReasonExitCode}},
		{"max_attempts not yet", func(in *restart.DecideInput) { in.Policy = max3; in.Exit.Code = code(1); in.Status.Attempts = 2 },
			sched(restart.ReasonExitCode, 3, stopped.Add(20*time.Second))},
		{"stable run resets (exactly stable_after)", func(in *restart.DecideInput) {
			in.Policy = max3
			in.Exit.Code = code(1)
			in.Status.Attempts = 3
			in.StartedAt = stopped.Add(-10 * time.Minute)
		}, want{action: restart.ActionSchedule, reason: restart.ReasonExitCode, attempt: 1, at: stopped.Add(5 * time.Second), reset: true}},
		{"run just short of stable_after", func(in *restart.DecideInput) {
			in.Exit.Code = code(1)
			in.Status.Attempts = 3
			in.StartedAt = stopped.Add(-10*time.Minute + time.Millisecond)
		}, sched(restart.ReasonExitCode, 4, stopped.Add(40*time.Second))},
		{"persisted schedule is kept", func(in *restart.DecideInput) {
			in.Exit.Code = code(1)
			in.Status = restart.Status{Attempts: 2, NextAttemptAt: t0.Add(time.Hour), LastReason: restart.ReasonVMCrashed}
		}, sched(restart.ReasonVMCrashed, 3, t0.Add(time.Hour))},
		{"health stop: schedule from status", func(in *restart.DecideInput) {
			in.Exit = restart.ExitInfo{StoppedByHypeman: true}
			in.Status = restart.Status{NextAttemptAt: t0.Add(3 * time.Second), LastReason: restart.ReasonHealthCheck}
		}, sched(restart.ReasonHealthCheck, 1, t0.Add(3*time.Second))},
		{"unknown stop time: from now", func(in *restart.DecideInput) { in.Exit.VMCrashed = true; in.StoppedAt = time.Time{} },
			sched(restart.ReasonVMCrashed, 1, t0.Add(5*time.Second))},
		{"standby never touched", func(in *restart.DecideInput) { in.State = state.Standby; in.Exit.Code = code(1) }, noneW},
		{"unknown never touched", func(in *restart.DecideInput) { in.State = state.Unknown; in.Exit.Code = code(1) }, noneW},
		{"running", func(in *restart.DecideInput) { in.State = state.Running; in.Exit.Code = code(1) }, noneW},
		{"health failed while running", func(in *restart.DecideInput) {
			in.State, in.HealthFailed, in.StoppedAt = state.Running, true, time.Time{}
			in.Status.Attempts = 1
		}, sched(restart.ReasonHealthCheck, 2, t0.Add(10*time.Second))},
		{"health failed after a stable run", func(in *restart.DecideInput) {
			in.State, in.HealthFailed, in.StoppedAt = state.Running, true, time.Time{}
			in.Status.Attempts = 5
			in.StartedAt = t0.Add(-time.Hour)
		}, want{action: restart.ActionSchedule, reason: restart.ReasonHealthCheck, attempt: 1, at: t0.Add(5 * time.Second), reset: true}},
		{"health failed, max attempts", func(in *restart.DecideInput) {
			in.Policy = max3
			in.State, in.HealthFailed = state.Running, true
			in.Status.Attempts = 3
		}, want{action: restart.ActionBlock, blocked: restart.BlockedMaxAttempts, reason: restart.ReasonHealthCheck}},
		{"health failed but stopped", func(in *restart.DecideInput) { in.HealthFailed = true }, noneW},
		{"health failed under never", func(in *restart.DecideInput) {
			in.Policy = restart.Policy{}
			in.State, in.HealthFailed = state.Running, true
		}, noneW},
	}
	for _, c := range cases {
		in := base
		c.mod(&in)
		d := restart.Decide(in)
		got := want{action: d.Action, reason: d.Reason, blocked: d.Blocked, attempt: d.Attempt, at: d.At, reset: d.ResetAttempts}
		if c.want.action != restart.ActionSchedule {
			got.at, got.attempt = c.want.at, c.want.attempt
		}
		if c.want.action == restart.ActionNone {
			got.reason = ""
		}
		if got != c.want {
			t.Errorf("%s: got %+v (%s), want %+v", c.name, got, d.Why, c.want)
		}
		if d.Why == "" {
			t.Errorf("%s: no explanation", c.name)
		}
	}
}

// TestPendingTruthTable is the wait hook: every state × policy × exit ×
// status combination that matters.
func TestPendingTruthTable(t *testing.T) {
	onf := restart.DefaultPolicy(restart.OnFailure)
	always := restart.DefaultPolicy(restart.Always)
	exit1 := restart.ExitInfo{Code: code(1)}
	exit0 := restart.ExitInfo{Code: code(0)}
	crash := restart.ExitInfo{VMCrashed: true}
	manual := restart.ExitInfo{StoppedByHypeman: true, Code: code(143)}
	blockedManual := restart.Status{BlockedReason: restart.BlockedManualStop}
	blockedMax := restart.Status{Attempts: 3, BlockedReason: restart.BlockedMaxAttempts}
	healthStop := restart.Status{NextAttemptAt: t0.Add(time.Second), LastReason: restart.ReasonHealthCheck}
	max3 := onf
	max3.MaxAttempts = 3

	cases := []struct {
		st     state.State
		policy restart.Policy
		exit   restart.ExitInfo
		status restart.Status
		want   bool
	}{
		{state.Stopped, restart.Policy{}, exit1, restart.Status{}, false},
		{state.Stopped, onf, exit1, restart.Status{}, true},
		{state.Stopped, onf, crash, restart.Status{}, true},
		{state.Stopped, onf, exit0, restart.Status{}, false},
		{state.Stopped, always, exit0, restart.Status{}, true},
		{state.Stopped, always, manual, blockedManual, false},
		{state.Stopped, onf, exit1, blockedManual, false},
		{state.Stopped, onf, exit1, blockedMax, false},
		{state.Stopped, max3, exit1, restart.Status{Attempts: 3}, false}, // about to be blocked
		{state.Stopped, max3, exit1, restart.Status{Attempts: 2}, true},
		{state.Stopped, onf, manual, healthStop, true},
		{state.Stopped, onf, restart.ExitInfo{}, restart.Status{}, false},
		{state.Shutdown, onf, restart.ExitInfo{}, restart.Status{}, true},
		{state.Shutdown, restart.Policy{}, restart.ExitInfo{}, restart.Status{}, false},
		{state.Shutdown, onf, restart.ExitInfo{}, blockedManual, false},
		{state.Running, onf, restart.ExitInfo{}, healthStop, true},
		{state.Running, onf, restart.ExitInfo{}, restart.Status{}, false},
		{state.Standby, always, exit1, restart.Status{}, false},
		{state.Unknown, always, exit1, restart.Status{}, false},
		{state.Paused, always, exit1, restart.Status{}, false},
	}
	for i, c := range cases {
		s := restart.Snapshot{ID: "x", State: c.st, Policy: c.policy, Exit: c.exit, Status: c.status,
			StartedAt: t0.Add(-time.Minute), StoppedAt: t0}
		if got := restart.Pending(s, t0); got != c.want {
			t.Errorf("case %d %s policy=%s exit=%+v status=%+v: Pending = %v, want %v",
				i, c.st, c.policy.Kind(), c.exit, c.status, got, c.want)
		}
	}
}

func ExampleDelay() {
	p := restart.DefaultPolicy(restart.OnFailure)
	var seq []time.Duration
	for n := 1; n <= 8; n++ {
		seq = append(seq, restart.Delay(p, n, 0))
	}
	fmt.Println(seq)
	fmt.Println(restart.Delay(p, 1, 0.5)) // jitter removes up to 20%
	// Output:
	// [5s 10s 20s 40s 1m20s 2m40s 5m0s 5m0s]
	// 4.5s
}
