package restart_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"hypeman/internal/instances/state"
	"hypeman/internal/restart"
)

func scheduled(h *harness, id string) func() bool {
	return func() bool { return !h.m.get(id).Status.NextAttemptAt.IsZero() }
}

func isRunning(h *harness, id string) func() bool {
	return func() bool { return h.m.get(id).State == state.Running }
}

// TestBackoffSequenceThenBlocked: a program that keeps exiting 1 is
// restarted after 5s, 10s, 20s, then blocked by max_attempts 3.
func TestBackoffSequenceThenBlocked(t *testing.T) {
	h := newHarness(t)
	p := restart.DefaultPolicy(restart.OnFailure)
	p.MaxAttempts = 3
	h.m.add("a", p)
	h.m.start(t, "a")
	ctrl, _ := h.run(t, 0)

	for i, delay := range []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second} {
		h.m.exit(t, "a", restart.ExitInfo{Code: code(1)})
		eventually(t, "restart scheduled", scheduled(h, "a"))
		s := h.m.get("a")
		if got := s.Status.NextAttemptAt.Sub(s.StoppedAt); got != delay {
			t.Fatalf("attempt %d: delay %s, want %s", i+1, got, delay)
		}
		if s.Status.LastReason != restart.ReasonExitCode || s.Status.Attempts != i {
			t.Fatalf("attempt %d: status %+v", i+1, s.Status)
		}
		if !ctrl.RestartPending("a") {
			t.Fatalf("attempt %d: RestartPending false during backoff", i+1)
		}
		h.clock.Advance(delay - time.Millisecond)
		settle()
		if st := h.m.get("a").State; st != state.Stopped {
			t.Fatalf("attempt %d: restarted before the delay (state %s)", i+1, st)
		}
		h.clock.Advance(time.Millisecond)
		eventually(t, "restarted", isRunning(h, "a"))
		s = h.m.get("a")
		if s.Status.Attempts != i+1 || !s.Status.NextAttemptAt.IsZero() || !s.Status.LastAttemptAt.Equal(h.clock.Now()) {
			t.Fatalf("after attempt %d: status %+v", i+1, s.Status)
		}
	}
	h.m.exit(t, "a", restart.ExitInfo{Code: code(1)})
	eventually(t, "blocked", func() bool { return h.m.get("a").Status.BlockedReason == restart.BlockedMaxAttempts })
	if ctrl.RestartPending("a") {
		t.Fatal("RestartPending true while blocked")
	}
	h.clock.Advance(time.Hour)
	settle()
	if st := h.m.get("a").State; st != state.Stopped || h.m.restartStarts.Load() != 3 {
		t.Fatalf("after blocking: state %s, %d restarts", st, h.m.restartStarts.Load())
	}
	eventually(t, "metrics", func() bool {
		return h.metrics.attempted("exit_code/true") == 3 && h.metrics.blockedN(restart.BlockedMaxAttempts) == 1
	})
	h.metrics.mu.Lock()
	backoffs := append([]time.Duration(nil), h.metrics.backoffs...)
	h.metrics.mu.Unlock()
	if len(backoffs) != 3 || backoffs[0] != 5*time.Second || backoffs[2] != 20*time.Second {
		t.Fatalf("backoff observations %v", backoffs)
	}
	// API start lifts the block and starts a new series.
	h.m.start(t, "a")
	h.m.exit(t, "a", restart.ExitInfo{Code: code(2)})
	eventually(t, "rescheduled after a manual start", scheduled(h, "a"))
	if s := h.m.get("a"); s.Status.Attempts != 0 || s.Status.NextAttemptAt.Sub(s.StoppedAt) != 5*time.Second {
		t.Fatalf("new series status %+v", s.Status)
	}
}

func TestAlwaysVsOnFailureOnExitZero(t *testing.T) {
	h := newHarness(t)
	h.m.add("always", restart.DefaultPolicy(restart.Always))
	h.m.add("onfail", restart.DefaultPolicy(restart.OnFailure))
	h.m.start(t, "always")
	h.m.start(t, "onfail")
	ctrl, _ := h.run(t, 0)

	h.m.exit(t, "onfail", restart.ExitInfo{Code: code(0)})
	h.m.exit(t, "always", restart.ExitInfo{Code: code(0)})
	eventually(t, "always scheduled", scheduled(h, "always"))
	if ctrl.RestartPending("onfail") || !ctrl.RestartPending("always") {
		t.Fatal("RestartPending wrong for exit 0")
	}
	h.clock.Advance(5 * time.Second)
	eventually(t, "always restarted", isRunning(h, "always"))
	settle()
	if s := h.m.get("onfail"); s.State != state.Stopped || !s.Status.IsZero() {
		t.Fatalf("on_failure after exit 0: %s %+v", s.State, s.Status)
	}
	if got := h.m.get("always").Status.LastReason; got != restart.ReasonExitCode {
		t.Fatalf("always last_reason %q", got)
	}
}

func TestStableAfterResetsAttempts(t *testing.T) {
	h := newHarness(t)
	p := restart.DefaultPolicy(restart.OnFailure)
	p.MaxAttempts = 3
	h.m.add("a", p)
	h.m.start(t, "a")
	h.m.setStatus("a", restart.Status{Attempts: 3, LastReason: restart.ReasonVMCrashed})
	h.run(t, 0)

	h.clock.Advance(10 * time.Minute) // a stable run
	h.m.exit(t, "a", restart.ExitInfo{VMCrashed: true})
	eventually(t, "scheduled", scheduled(h, "a"))
	s := h.m.get("a")
	if s.Status.Attempts != 0 || s.Status.NextAttemptAt.Sub(s.StoppedAt) != 5*time.Second || s.Status.LastReason != restart.ReasonVMCrashed {
		t.Fatalf("after a stable run: %+v", s.Status)
	}
	h.clock.Advance(5 * time.Second)
	eventually(t, "restarted", isRunning(h, "a"))
	if got := h.m.get("a").Status.Attempts; got != 1 {
		t.Fatalf("attempts %d, want 1", got)
	}
}

func TestManualStopDuringBackoffKeepsItDown(t *testing.T) {
	h := newHarness(t)
	h.m.add("a", restart.DefaultPolicy(restart.Always))
	h.m.start(t, "a")
	ctrl, _ := h.run(t, 0)
	h.m.exit(t, "a", restart.ExitInfo{Code: code(1)})
	eventually(t, "scheduled", scheduled(h, "a"))

	h.m.stop("a") // API stop of a Stopped instance in backoff
	if ctrl.RestartPending("a") {
		t.Fatal("RestartPending true after a manual stop")
	}
	h.clock.Advance(time.Hour)
	eventually(t, "the due attempt checked and refused", func() bool { return h.m.startCalls.Load() >= 1 })
	settle()
	s := h.m.get("a")
	if s.State != state.Stopped || s.Status.BlockedReason != restart.BlockedManualStop || h.m.restartStarts.Load() != 0 {
		t.Fatalf("after manual stop in backoff: %s %+v, %d restarts", s.State, s.Status, h.m.restartStarts.Load())
	}
	eventually(t, "blocked metric", func() bool { return h.metrics.blockedN(restart.BlockedManualStop) == 1 })
	h.clock.Advance(time.Hour) // more reconciles: still down, counted once
	settle()
	if h.metrics.blockedN(restart.BlockedManualStop) != 1 || h.m.get("a").State != state.Stopped {
		t.Fatal("manual stop not sticky")
	}
}

// TestManualStopWinsTOCTOU puts a manual stop exactly between the
// controller's decision (the restart is due) and the start: the check run
// under the lock must see it and refuse.
func TestManualStopWinsTOCTOU(t *testing.T) {
	h := newHarness(t)
	h.m.add("a", restart.DefaultPolicy(restart.OnFailure))
	h.m.start(t, "a")
	var once sync.Once
	hook := func(id string) { once.Do(func() { h.m.stop(id) }) }
	h.m.beforeStartLock.Store(&hook)
	h.run(t, 0)

	h.m.exit(t, "a", restart.ExitInfo{Code: code(1)})
	eventually(t, "scheduled", scheduled(h, "a"))
	h.clock.Advance(5 * time.Second)
	eventually(t, "attempt made", func() bool { return h.m.startCalls.Load() == 1 })
	settle()
	s := h.m.get("a")
	if s.State != state.Stopped || s.Status.BlockedReason != restart.BlockedManualStop || h.m.restartStarts.Load() != 0 {
		t.Fatalf("manual stop lost the race: %s %+v, %d restarts", s.State, s.Status, h.m.restartStarts.Load())
	}
	if v := h.m.violations(); len(v) != 0 {
		t.Fatal(v)
	}
}

// TestManualStopRace runs a user's stop concurrently with a due restart
// many times (a fresh instance per round, so rounds cannot interfere).
// Whichever gets the instance lock first, the user's stop wins: the
// instance ends Stopped and blocked, and no restart ever starts it after
// the stop (the fake records any such start as a violation).
func TestManualStopRace(t *testing.T) {
	h := newHarness(t)
	h.run(t, 0)
	const rounds = 300
	ids := make([]string, rounds)
	for i := range rounds {
		id := fmt.Sprintf("r%d", i)
		ids[i] = id
		h.m.add(id, restart.DefaultPolicy(restart.OnFailure))
		h.m.start(t, id)
		h.m.exit(t, id, restart.ExitInfo{Code: code(1)})
		eventually(t, "scheduled", scheduled(h, id))
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); h.clock.Advance(5 * time.Second) }()
		pause := time.Duration(i%7) * 50 * time.Microsecond // spread the orderings
		go func() { defer wg.Done(); time.Sleep(pause); h.m.stop(id) }()
		wg.Wait()
		eventually(t, "stopped and blocked", func() bool {
			s := h.m.get(id)
			return s.State == state.Stopped && s.Status.BlockedReason == restart.BlockedManualStop
		})
	}
	// Let every in-flight attempt finish and a few reconciles run.
	for range 3 {
		h.clock.Advance(10 * time.Second)
		settle()
	}
	startedFirst := 0
	for _, id := range ids {
		in, _ := h.m.inst(id)
		in.mu.Lock()
		st, blocked, n := in.snap.State, in.snap.Status.BlockedReason, in.restartStarts
		in.mu.Unlock()
		if st != state.Stopped || blocked != restart.BlockedManualStop || n > 1 {
			t.Errorf("%s: final %s %q after %d restart starts", id, st, blocked, n)
		}
		startedFirst += n
	}
	if v := h.m.violations(); len(v) != 0 {
		t.Fatal(v)
	}
	t.Logf("%d rounds: the restart got the lock first (then the user's stop ended it) %d times, the stop first %d times",
		rounds, startedFirst, rounds-startedFirst)
}

func TestHealthFailureRestarts(t *testing.T) {
	h := newHarness(t)
	h.m.add("a", restart.DefaultPolicy(restart.OnFailure))
	h.m.add("never", restart.Policy{})
	h.m.start(t, "a")
	h.m.start(t, "never")
	ctrl, _ := h.run(t, 0)
	boot := h.m.get("a").StartedAt

	// A report about an earlier boot is ignored.
	ctrl.HealthFailed("a", boot.Add(-time.Hour), "stale")
	ctrl.HealthFailed("never", h.m.get("never").StartedAt, "HTTP 500")
	settle()
	if h.m.healthStops.Load() != 0 {
		t.Fatal("stale report or never policy stopped an instance")
	}

	h.clock.Advance(time.Minute)
	ctrl.HealthFailed("a", boot, "HTTP 500, want 200")
	eventually(t, "health stop", func() bool { return h.m.get("a").State == state.Stopped })
	s := h.m.get("a")
	want := restart.Status{NextAttemptAt: h.clock.Now().Add(5 * time.Second), LastReason: restart.ReasonHealthCheck}
	if s.Status != want || !s.Exit.StoppedByHypeman {
		t.Fatalf("after health stop: %+v exit %+v, want %+v", s.Status, s.Exit, want)
	}
	if !ctrl.RestartPending("a") {
		t.Fatal("RestartPending false in health backoff")
	}
	h.clock.Advance(5 * time.Second)
	eventually(t, "restarted", isRunning(h, "a"))
	if s := h.m.get("a"); s.Status.Attempts != 1 || s.Status.LastReason != restart.ReasonHealthCheck {
		t.Fatalf("after health restart: %+v", s.Status)
	}
	eventually(t, "metric", func() bool { return h.metrics.attempted("health_check_failed/true") == 1 })

	// Second failure of the new boot: attempt 2, 10s.
	h.clock.Advance(time.Second)
	ctrl.HealthFailed("a", h.m.get("a").StartedAt, "timeout")
	eventually(t, "second health stop", func() bool { return h.m.get("a").State == state.Stopped })
	if s := h.m.get("a"); s.Status.NextAttemptAt.Sub(s.StoppedAt) != 10*time.Second {
		t.Fatalf("second health restart delay: %+v", s.Status)
	}
	if h.m.get("never").State != state.Running {
		t.Fatal("never-policy instance was touched")
	}
}

func TestHealthFailureBlockedLeavesItRunning(t *testing.T) {
	h := newHarness(t)
	p := restart.DefaultPolicy(restart.Always)
	p.MaxAttempts = 1
	h.m.add("a", p)
	h.m.start(t, "a")
	h.m.setStatus("a", restart.Status{Attempts: 1})
	ctrl, _ := h.run(t, 0)
	ctrl.HealthFailed("a", h.m.get("a").StartedAt, "unhealthy")
	eventually(t, "blocked", func() bool { return h.m.get("a").Status.BlockedReason == restart.BlockedMaxAttempts })
	if h.m.get("a").State != state.Running || h.m.healthStops.Load() != 0 {
		t.Fatal("a blocked health restart stopped the instance")
	}
	eventually(t, "blocked metric", func() bool { return h.metrics.blockedN(restart.BlockedMaxAttempts) == 1 })
}

// TestDaemonRestartMidBackoff: a new controller continues the persisted
// schedule (not re-jittered, not immediate) and starts exactly once.
func TestDaemonRestartMidBackoff(t *testing.T) {
	h := newHarness(t)
	h.m.add("a", restart.DefaultPolicy(restart.OnFailure))
	h.m.start(t, "a")
	h.m.setStatus("a", restart.Status{Attempts: 2})
	_, stopA := h.run(t, 0.5)
	h.m.exit(t, "a", restart.ExitInfo{Code: code(1)})
	eventually(t, "scheduled by the first daemon", scheduled(h, "a"))
	at := h.m.get("a").Status.NextAttemptAt
	if want := h.m.get("a").StoppedAt.Add(18 * time.Second); !at.Equal(want) { // 20s with 10% jitter off
		t.Fatalf("scheduled at %s, want %s", at, want)
	}
	stopA() // the daemon dies mid-backoff
	h.clock.Advance(10 * time.Second)

	snaps := h.m.snapshots.Load()
	h.run(t, 0) // a different draw: a recomputed schedule would be 20s
	eventually(t, "the new controller looked", func() bool { return h.m.snapshots.Load() > snaps })
	settle()
	if !h.m.get("a").Status.NextAttemptAt.Equal(at) {
		t.Fatalf("schedule changed across the restart: %s → %s", at, h.m.get("a").Status.NextAttemptAt)
	}
	h.clock.Advance(at.Sub(h.clock.Now()) - time.Millisecond)
	settle()
	if h.m.restartStarts.Load() != 0 {
		t.Fatal("started before the persisted time")
	}
	h.clock.Advance(time.Millisecond)
	eventually(t, "restarted", isRunning(h, "a"))
	for range 5 { // reconciles and stray wake-ups must not start it again
		h.clock.Advance(10 * time.Second)
		settle()
	}
	if n := h.m.restartStarts.Load(); n != 1 {
		t.Fatalf("%d starts, want 1", n)
	}
	if got := h.m.get("a").Status.Attempts; got != 3 {
		t.Fatalf("attempts %d, want 3", got)
	}
}

// TestDaemonRestartOverdue: the persisted time passed while the daemon was
// down: one start at once, no second one.
func TestDaemonRestartOverdue(t *testing.T) {
	h := newHarness(t)
	h.m.add("a", restart.DefaultPolicy(restart.OnFailure))
	h.m.start(t, "a")
	h.m.exit(t, "a", restart.ExitInfo{VMCrashed: true})
	h.m.setStatus("a", restart.Status{NextAttemptAt: h.clock.Now().Add(time.Second), LastReason: restart.ReasonVMCrashed})
	h.clock.Advance(time.Minute)
	h.run(t, 0)
	eventually(t, "restarted", isRunning(h, "a"))
	h.clock.Advance(30 * time.Second)
	settle()
	if n := h.m.restartStarts.Load(); n != 1 {
		t.Fatalf("%d starts, want 1", n)
	}
}

func TestFailedStartSchedulesNextAttempt(t *testing.T) {
	h := newHarness(t)
	h.m.add("a", restart.DefaultPolicy(restart.OnFailure))
	h.m.start(t, "a")
	h.run(t, 0)
	boom := errors.New("launch failed: out of memory")
	h.m.startErr.Store(&boom)
	h.m.exit(t, "a", restart.ExitInfo{Code: code(3)})
	eventually(t, "scheduled", scheduled(h, "a"))
	h.clock.Advance(5 * time.Second)
	eventually(t, "failed attempt", func() bool {
		s := h.m.get("a")
		return s.Status.Attempts == 1 && !s.Status.NextAttemptAt.IsZero()
	})
	s := h.m.get("a")
	if s.State != state.Stopped || s.Status.NextAttemptAt.Sub(h.clock.Now()) != 10*time.Second {
		t.Fatalf("after a failed start: %s %+v", s.State, s.Status)
	}
	h.m.startErr.Store(nil)
	h.clock.Advance(10 * time.Second)
	eventually(t, "restarted", isRunning(h, "a"))
	if got := h.m.get("a").Status.Attempts; got != 2 {
		t.Fatalf("attempts %d, want 2", got)
	}
	eventually(t, "metrics", func() bool {
		return h.metrics.attempted("exit_code/false") == 1 && h.metrics.attempted("vm_crashed/true") == 1
	})
}

func TestPolicyUpdate(t *testing.T) {
	h := newHarness(t)
	h.m.add("a", restart.Policy{})
	h.m.start(t, "a")
	ctrl, _ := h.run(t, 0)
	h.m.exit(t, "a", restart.ExitInfo{Code: code(1)})
	settle()
	if !h.m.get("a").Status.IsZero() || ctrl.RestartPending("a") {
		t.Fatal("never policy scheduled something")
	}
	// Turning on a policy re-decides from the recorded exit.
	p := restart.DefaultPolicy(restart.OnFailure)
	p.MaxAttempts = 1
	h.m.setPolicy("a", p)
	ctrl.Refresh("a")
	eventually(t, "scheduled after policy update", scheduled(h, "a"))
	h.clock.Advance(5 * time.Second)
	eventually(t, "restarted", isRunning(h, "a"))
	h.m.exit(t, "a", restart.ExitInfo{Code: code(1)})
	eventually(t, "blocked", func() bool { return h.m.get("a").Status.BlockedReason == restart.BlockedMaxAttempts })

	// Raising max_attempts resets the counters and lifts the block.
	p.MaxAttempts = 5
	h.m.setPolicy("a", p)
	ctrl.Refresh("a")
	eventually(t, "rescheduled", scheduled(h, "a"))
	if s := h.m.get("a").Status; s.Attempts != 0 || s.BlockedReason != "" {
		t.Fatalf("after raising max_attempts: %+v", s)
	}

	// A manual stop survives a policy change.
	h.m.stop("a")
	p.Policy = restart.Always
	h.m.setPolicy("a", p)
	ctrl.Refresh("a")
	h.clock.Advance(time.Hour)
	settle()
	if s := h.m.get("a"); s.State != state.Stopped || s.Status.BlockedReason != restart.BlockedManualStop {
		t.Fatalf("after policy change of a manually stopped instance: %s %+v", s.State, s.Status)
	}
}

func TestStandbyAndDeletedAreLeftAlone(t *testing.T) {
	h := newHarness(t)
	h.m.add("a", restart.DefaultPolicy(restart.Always))
	h.m.start(t, "a")
	ctrl, _ := h.run(t, 0)
	h.m.exit(t, "a", restart.ExitInfo{Code: code(1)})
	eventually(t, "scheduled", scheduled(h, "a"))
	h.m.remove("a")
	if ctrl.RestartPending("a") {
		t.Fatal("RestartPending true for a deleted instance")
	}
	h.clock.Advance(time.Minute)
	settle()
	if h.m.restartStarts.Load() != 0 {
		t.Fatal("a deleted instance was restarted")
	}

	h.m.add("s", restart.DefaultPolicy(restart.Always))
	in, _ := h.m.inst("s")
	in.mu.Lock()
	in.snap.State, in.snap.Exit = state.Standby, restart.ExitInfo{Code: code(1)}
	in.mu.Unlock()
	ctrl.Refresh("s")
	h.clock.Advance(time.Minute)
	settle()
	if s := h.m.get("s"); s.State != state.Standby || !s.Status.IsZero() || h.m.restartStarts.Load() != 0 {
		t.Fatalf("standby instance touched: %+v", s)
	}
}

func TestRunTwiceAndConfig(t *testing.T) {
	if _, err := restart.New(restart.Config{}); err == nil {
		t.Fatal("New without Instances/Events succeeded")
	}
	h := newHarness(t)
	c, _ := h.run(t, 0)
	eventually(t, "first Run started", func() bool { return h.bus.Subscribers("") == 1 })
	if err := c.Run(t.Context()); err == nil {
		t.Fatal("second concurrent Run succeeded")
	}
}

// TestRestartsCountsEveryRestart: Restarts counts each restart the
// controller makes and is never reset: not by a stable run (which resets
// Attempts), a manual stop and start (which are not restarts), or a policy
// change.
func TestRestartsCountsEveryRestart(t *testing.T) {
	h := newHarness(t)
	h.m.add("a", restart.DefaultPolicy(restart.OnFailure))
	h.m.start(t, "a")
	ctrl, _ := h.run(t, 0)
	restartOnce := func(wantAttempts, wantRestarts int) {
		t.Helper()
		h.m.exit(t, "a", restart.ExitInfo{Code: code(1)})
		eventually(t, "scheduled", scheduled(h, "a"))
		h.clock.Advance(h.m.get("a").Status.NextAttemptAt.Sub(h.clock.Now()))
		eventually(t, "restarted", isRunning(h, "a"))
		if s := h.m.get("a").Status; s.Attempts != wantAttempts || s.Restarts != wantRestarts {
			t.Fatalf("status %+v, want attempts %d restarts %d", s, wantAttempts, wantRestarts)
		}
	}
	restartOnce(1, 1)
	restartOnce(2, 2)
	h.clock.Advance(restart.DefaultStableAfter) // a stable run: a new series
	restartOnce(1, 3)

	h.m.stop("a") // manual stop and start: not restarts
	h.m.start(t, "a")
	if s := h.m.get("a").Status; s.Restarts != 3 || s.Attempts != 0 {
		t.Fatalf("after manual stop/start: %+v", s)
	}
	p := restart.DefaultPolicy(restart.Always)
	h.m.setPolicy("a", p)
	ctrl.Refresh("a")
	if s := h.m.get("a").Status; s.Restarts != 3 {
		t.Fatalf("after a policy change: %+v", s)
	}
	restartOnce(1, 4)
	if got := h.m.restartStarts.Load(); got != 4 {
		t.Fatalf("the manager saw %d restarts, status says 4", got)
	}
}
