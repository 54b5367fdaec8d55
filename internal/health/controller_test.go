package health_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"hypeman/internal/health"
	"hypeman/internal/instances/state"
	"hypeman/internal/restart"
)

// tick advances one interval and waits until instance id was probed, the
// result persisted, and every runner re-armed (timers: the reconcile timer
// plus one per checked instance).
func (h *harness) tick(t *testing.T, d time.Duration, timers int, ids ...string) {
	t.Helper()
	before := map[string]int{}
	for _, id := range ids {
		before[id] = h.prober.n(id)
	}
	want := h.clock.Now().Add(d)
	h.clock.Advance(d)
	for _, id := range ids {
		eventually(t, "probe of "+id+" recorded", func() bool {
			return h.prober.n(id) == before[id]+1 && h.m.get(id).hst.LastCheckAt.Equal(want)
		})
	}
	h.waitTimers(t, timers)
}

func TestChecksDriveStatusAndReportUnhealthy(t *testing.T) {
	h := newHarness(t)
	c := httpCheck() // every 10s, start period 30s, 3 failures, 1 success
	h.prober.status("a", 200)
	h.m.add("a", c, restart.Policy{})
	boot := h.m.get("a").startedAt
	h.run(t)
	eventually(t, "starting", func() bool { return h.m.get("a").hst.Status == health.Starting })
	h.waitTimers(t, 2)

	h.tick(t, 10*time.Second, 2, "a")
	if s := h.m.get("a").hst; s.Status != health.Healthy || s.ConsecutiveSuccesses != 1 {
		t.Fatalf("after a success: %+v", s)
	}
	h.prober.status("a", 500)
	for i := 1; i <= 2; i++ {
		h.tick(t, 10*time.Second, 2, "a")
		if s := h.m.get("a").hst; s.Status != health.Healthy || s.ConsecutiveFailures != i {
			t.Fatalf("failure %d: %+v", i, s)
		}
	}
	if len(h.restarter.get()) != 0 {
		t.Fatal("restarter called before unhealthy")
	}
	h.tick(t, 10*time.Second, 2, "a")
	s := h.m.get("a").hst
	if s.Status != health.Unhealthy || s.LastError != "HTTP status 500, want 200" {
		t.Fatalf("third failure: %+v", s)
	}
	calls := h.restarter.get()
	if len(calls) != 1 || calls[0].id != "a" || !calls[0].boot.Equal(boot) || calls[0].detail != "HTTP status 500, want 200" {
		t.Fatalf("restarter calls %+v", calls)
	}
	h.tick(t, 10*time.Second, 2, "a") // still failing: told again
	if len(h.restarter.get()) != 2 {
		t.Fatalf("restarter not told again while unhealthy: %+v", h.restarter.get())
	}
	h.prober.status("a", 200)
	h.tick(t, 10*time.Second, 2, "a")
	if s := h.m.get("a").hst; s.Status != health.Healthy || len(h.restarter.get()) != 2 {
		t.Fatalf("recovery: %+v, %d restarter calls", s, len(h.restarter.get()))
	}
	if h.metrics.get("http/success") != 2 || h.metrics.get("http/failure") != 4 {
		t.Fatalf("metrics %v", h.metrics.n)
	}
}

// TestReportOnlyNeverCallsTheRestarter: a report-only check reaches
// unhealthy like any other, but only the ordinary check beside it is
// reported to the Restarter, on every failing tick.
func TestReportOnlyNeverCallsTheRestarter(t *testing.T) {
	h := newHarness(t)
	ready := httpCheck()
	ready.StartPeriod, ready.FailureThreshold, ready.ReportOnly = 0, 2, true
	live := ready
	live.ReportOnly = false
	for id, c := range map[string]health.Check{"ready": ready, "live": live} {
		h.prober.status(id, 200)
		h.m.add(id, c, restart.DefaultPolicy(restart.Always))
	}
	h.run(t)
	h.waitTimers(t, 3) // reconcile + two runners
	h.tick(t, 10*time.Second, 3, "ready", "live")
	for _, id := range []string{"ready", "live"} {
		if s := h.m.get(id).hst; s.Status != health.Healthy {
			t.Fatalf("%s before failing: %+v", id, s)
		}
		h.prober.status(id, 503)
	}
	for i := 1; i <= 4; i++ {
		h.tick(t, 10*time.Second, 3, "ready", "live")
		wantStatus, wantCalls := health.Healthy, 0
		if i >= 2 {
			wantStatus, wantCalls = health.Unhealthy, i-1
		}
		for _, id := range []string{"ready", "live"} {
			if s := h.m.get(id).hst; s.Status != wantStatus || s.ConsecutiveFailures != i {
				t.Fatalf("%s after failure %d: %+v, want %s", id, i, s, wantStatus)
			}
		}
		calls := h.restarter.get()
		if len(calls) != wantCalls {
			t.Fatalf("after failure %d: %d restarter calls %+v, want %d (for live only)", i, len(calls), calls, wantCalls)
		}
		for _, c := range calls {
			if c.id != "live" {
				t.Fatalf("restarter told about the report-only check: %+v", c)
			}
		}
	}
	if s := h.m.get("ready"); s.state != state.Running {
		t.Fatalf("report-only instance left Running: %s", s.state)
	}
}

func TestProbeTimeoutUsesTheClock(t *testing.T) {
	h := newHarness(t)
	c := httpCheck()
	c.StartPeriod, c.FailureThreshold = 0, 1
	h.prober.entered = make(chan string, 4)
	h.prober.set("a", func(ctx context.Context) (int, error) { <-ctx.Done(); return 0, ctx.Err() })
	h.m.add("a", c, restart.Policy{})
	h.run(t)
	h.waitTimers(t, 2)
	h.clock.Advance(10 * time.Second)
	<-h.prober.entered
	h.waitTimers(t, 2) // reconcile + the probe's timeout
	h.clock.Advance(2*time.Second - time.Millisecond)
	settle()
	if !h.m.get("a").hst.LastCheckAt.IsZero() {
		t.Fatal("probe ended before its timeout")
	}
	h.clock.Advance(time.Millisecond)
	eventually(t, "timeout recorded", func() bool { return h.m.get("a").hst.Status == health.Unhealthy })
	if s := h.m.get("a").hst; s.LastError != "timed out after 2s" {
		t.Fatalf("timeout status %+v", s)
	}
	if h.metrics.get("http/timeout") != 1 || len(h.restarter.get()) != 1 {
		t.Fatalf("metrics %v, restarter %v", h.metrics.n, h.restarter.get())
	}
}

func TestExecAndTCPChecks(t *testing.T) {
	h := newHarness(t)
	ex := health.DefaultCheck(health.Exec)
	ex.Command, ex.StartPeriod, ex.FailureThreshold = []string{"pg_isready"}, 0, 1
	tcp := health.DefaultCheck(health.TCP)
	tcp.Port, tcp.StartPeriod, tcp.FailureThreshold = 5432, 0, 1
	h.prober.set("e", func(context.Context) (int, error) { return 1, nil })
	h.prober.set("t", func(context.Context) (int, error) { return 0, errors.New("connection refused") })
	h.m.add("e", ex, restart.Policy{})
	h.m.add("t", tcp, restart.Policy{})
	h.run(t)
	h.waitTimers(t, 3)
	h.tick(t, 10*time.Second, 3, "e", "t")
	if s := h.m.get("e").hst; s.Status != health.Unhealthy || s.LastError != "command exited with code 1" {
		t.Fatalf("exec: %+v", s)
	}
	if s := h.m.get("t").hst; s.Status != health.Unhealthy || s.LastError != "connection refused" {
		t.Fatalf("tcp: %+v", s)
	}
	h.prober.set("e", func(context.Context) (int, error) { return 0, nil })
	h.prober.set("t", func(context.Context) (int, error) { return 0, nil })
	h.tick(t, 10*time.Second, 3, "e", "t")
	if h.m.get("e").hst.Status != health.Healthy || h.m.get("t").hst.Status != health.Healthy {
		t.Fatal("exec/tcp did not recover")
	}
	if h.metrics.get("exec/failure") != 1 || h.metrics.get("tcp/success") != 1 {
		t.Fatalf("metrics %v", h.metrics.n)
	}
}

func TestChecksFollowTheLifecycle(t *testing.T) {
	h := newHarness(t)
	h.prober.status("a", 200)
	h.m.add("a", httpCheck(), restart.Policy{})
	h.run(t)
	h.waitTimers(t, 2)
	h.tick(t, 10*time.Second, 2, "a")

	h.m.setState("a", state.Stopped)
	eventually(t, "unknown when stopped", func() bool { return h.m.get("a").hst.Status == health.Unknown })
	eventually(t, "runner gone", func() bool { return h.clock.Timers() == 1 })
	n := h.prober.n("a")
	h.clock.Advance(time.Minute)
	settle()
	if h.prober.n("a") != n {
		t.Fatal("probed a stopped instance")
	}
	if s := h.m.get("a").hst; s.ConsecutiveSuccesses != 0 || s.LastSuccessAt.IsZero() {
		t.Fatalf("stopped status should keep history only: %+v", s)
	}

	// A new boot starts over.
	h.clock.Advance(time.Second)
	in, _ := h.m.inst("a")
	h.m.boot("a", in)
	eventually(t, "starting on the new boot", func() bool {
		s := h.m.get("a").hst
		return s.Status == health.Starting && s.ConsecutiveSuccesses == 0
	})
	h.waitTimers(t, 2)
	h.tick(t, 10*time.Second, 2, "a")
	if s := h.m.get("a").hst; s.Status != health.Healthy || s.ConsecutiveSuccesses != 1 {
		t.Fatalf("new boot: %+v", s)
	}
}

func TestCheckChangesAndDaemonRestart(t *testing.T) {
	h := newHarness(t)
	h.prober.status("a", 200)
	c := httpCheck()
	h.m.add("a", c, restart.Policy{})
	ctrl, stop := h.run(t)
	h.waitTimers(t, 2)
	h.tick(t, 10*time.Second, 2, "a")

	// Daemon restart while running: the same boot's status carries on.
	stop()
	if h.clock.Timers() != 0 {
		t.Fatalf("%d timers left after Run returned", h.clock.Timers())
	}
	ctrl, _ = h.run(t)
	h.waitTimers(t, 2)
	h.tick(t, 10*time.Second, 2, "a")
	if s := h.m.get("a").hst; s.Status != health.Healthy || s.ConsecutiveSuccesses != 2 {
		t.Fatalf("after a daemon restart: %+v", s)
	}

	// PATCH health_check: a faster interval takes effect on Refresh.
	faster := c
	faster.Interval = 5 * time.Second
	in, _ := h.m.inst("a")
	in.mu.Lock()
	in.hst = health.ForCheckChange(in.check, faster, in.hst, true)
	in.check = faster
	in.mu.Unlock()
	ctrl.Refresh("a")
	// Step the clock until the new runner probes, then one 5s tick must
	// probe again (the old 10s runner would not).
	n0 := h.prober.n("a")
	eventually(t, "the new runner's first probe", func() bool {
		h.clock.Advance(time.Second)
		time.Sleep(2 * time.Millisecond)
		return h.prober.n("a") > n0
	})
	eventually(t, "first probe recorded", func() bool { return h.m.get("a").hst.LastCheckAt.Equal(h.clock.Now()) })
	h.waitTimers(t, 2)
	h.tick(t, 5*time.Second, 2, "a")

	// Removing the check disables it.
	in.mu.Lock()
	in.hst = health.ForCheckChange(in.check, health.Check{}, in.hst, true)
	in.check = health.Check{}
	in.mu.Unlock()
	ctrl.Refresh("a")
	eventually(t, "runner stopped", func() bool { return h.clock.Timers() == 1 })
	if s := h.m.get("a").hst; s.Status != health.Disabled {
		t.Fatalf("after removing the check: %+v", s)
	}
}

// TestUnhealthyInstanceIsRestartedAndRecovers wires the real restart
// controller: the health check fails, the instance is stopped with
// last_reason=health_check_failed, restarted after the backoff, and
// becomes healthy again.
func TestUnhealthyInstanceIsRestartedAndRecovers(t *testing.T) {
	h := newHarness(t)
	c := httpCheck()
	c.StartPeriod, c.FailureThreshold = 0, 2
	h.prober.status("a", 200)
	h.m.add("a", c, restart.DefaultPolicy(restart.OnFailure))
	firstBoot := h.m.get("a").startedAt

	rc, err := restart.New(restart.Config{Instances: h.m, Events: h.bus, Clock: h.clock, Rand: func() float64 { return 0 }})
	if err != nil {
		t.Fatal(err)
	}
	hc, err := health.New(health.Config{Instances: h.m, Prober: h.prober, Events: h.bus, Restarter: rc, Clock: h.clock, Metrics: h.metrics})
	if err != nil {
		t.Fatal(err)
	}
	start(t, rc.Run)
	start(t, hc.Run)
	h.waitTimers(t, 3) // two reconcile timers + the runner

	h.tick(t, 10*time.Second, 3, "a")
	if s := h.m.get("a").hst; s.Status != health.Healthy {
		t.Fatalf("before failing: %+v", s)
	}
	h.prober.status("a", 503)
	h.tick(t, 10*time.Second, 3, "a")
	h.clock.Advance(10 * time.Second) // second failure: unhealthy → stop
	eventually(t, "health stop", func() bool { return h.m.get("a").state == state.Stopped })
	got := h.m.get("a")
	if got.rst.LastReason != restart.ReasonHealthCheck || got.rst.NextAttemptAt.Sub(got.stoppedAt) != 5*time.Second || !got.exit.StoppedByHypeman {
		t.Fatalf("after the health stop: %+v exit %+v", got.rst, got.exit)
	}
	if !rc.RestartPending("a") {
		t.Fatal("RestartPending false in health backoff")
	}
	eventually(t, "health unknown while stopped", func() bool { return h.m.get("a").hst.Status == health.Unknown })

	h.prober.status("a", 200) // the new boot is fine
	h.clock.Advance(5 * time.Second)
	eventually(t, "restarted", func() bool {
		s := h.m.get("a")
		return s.state == state.Running && s.startedAt.After(firstBoot)
	})
	if s := h.m.get("a").rst; s.Attempts != 1 || s.LastReason != restart.ReasonHealthCheck {
		t.Fatalf("restart status %+v", s)
	}
	eventually(t, "starting on the new boot", func() bool { return h.m.get("a").hst.Status == health.Starting })
	h.waitTimers(t, 3)
	h.tick(t, 10*time.Second, 3, "a")
	if s := h.m.get("a").hst; s.Status != health.Healthy {
		t.Fatalf("after the restart: %+v", s)
	}
}
