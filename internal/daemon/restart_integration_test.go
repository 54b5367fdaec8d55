package daemon_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"hypeman/internal/daemon"
	"hypeman/internal/health"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/restart"
	"hypeman/internal/testutil/testimage"
)

func boots(t *testing.T, d *daemon.Daemon, id string) int {
	return strings.Count(serialLog(t, d, id), "HYPEMAN-PROGRAM-START")
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// A program that exits 1 is restarted until max_attempts, then blocked.
func TestRestartUntilMaxAttempts(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	ref := testimage.Push(t, testimage.Registry(t), "test/crash", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo crashing; exit 1"},
	}))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "crash", Image: ref, Size: "256MB", VCPUs: 1,
		RestartPolicy: &restart.Policy{Policy: restart.OnFailure, Backoff: time.Second, MaxBackoff: 2 * time.Second, MaxAttempts: 2, StableAfter: 10 * time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "restarts blocked", 3*time.Minute, func() bool {
		got := mustGet(t, d, in.ID)
		return got.RestartStatus != nil && got.RestartStatus.BlockedReason == restart.BlockedMaxAttempts && got.State == state.Stopped
	})
	got := mustGet(t, d, in.ID)
	if n := boots(t, d, in.ID); n != 3 {
		t.Fatalf("%d boots, want 3 (1 + max_attempts 2)", n)
	}
	if got.RestartStatus.Attempts != 2 || got.RestartStatus.LastReason != restart.ReasonExitCode {
		t.Fatalf("restart status %+v", got.RestartStatus)
	}
	// Nothing can bring it back: the policy's own predicate (the one the
	// wait endpoint uses) sees no pending restart and no attempt is
	// scheduled, so there is no timer to wait out.
	if d.Restart.RestartPending(in.ID) || !got.RestartStatus.NextAttemptAt.IsZero() {
		t.Fatalf("blocked instance still has a restart pending: %+v", got.RestartStatus)
	}
}

// stop during backoff keeps the instance down; wait?state=Running issued
// during backoff returns Running after the restart (another instance).
func TestRestartBackoffStopAndWait(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	// First boot exits 1; later boots run (the marker lives on the
	// writable disk, which survives restarts).
	ref := testimage.Push(t, testimage.Registry(t), "test/flaky", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"if [ -f /data/ran ]; then echo steady; exec sleep 600; fi; mkdir -p /data; touch /data/ran; sync; exit 1"},
	}))
	ctx := context.Background()
	pol := &restart.Policy{Policy: restart.OnFailure, Backoff: 4 * time.Second, MaxBackoff: 4 * time.Second, StableAfter: 10 * time.Minute}
	keep, err := d.Instances.Create(ctx, instances.CreateParams{Name: "keepdown", Image: ref, Size: "256MB", VCPUs: 1, RestartPolicy: pol})
	if err != nil {
		t.Fatal(err)
	}
	back, err := d.Instances.Create(ctx, instances.CreateParams{Name: "comeback", Image: ref, Size: "256MB", VCPUs: 1, RestartPolicy: pol})
	if err != nil {
		t.Fatal(err)
	}
	// Both exit 1 and wait in backoff.
	for _, id := range []string{keep.ID, back.ID} {
		waitFor(t, "backoff", 90*time.Second, func() bool {
			g := mustGet(t, d, id)
			return g.State == state.Stopped && g.RestartStatus != nil && !g.RestartStatus.NextAttemptAt.IsZero()
		})
	}
	// Stop during backoff: accepted, blocks, keeps it down.
	st, err := d.Instances.Stop(ctx, keep.ID, instances.StopParams{})
	if err != nil || st.RestartStatus == nil || st.RestartStatus.BlockedReason != restart.BlockedManualStop {
		t.Fatalf("stop during backoff: %v %+v", err, st)
	}
	// Wait for Running on the other one: Stopped is not terminal while a
	// restart is pending.
	res, err := d.Instances.WaitForState(ctx, back.ID, []state.State{state.Running}, 2*time.Minute)
	if err != nil || res.State != state.Running || res.TimedOut {
		t.Fatalf("wait during backoff: %v %+v", err, res)
	}
	// The stopped one stays down: its scheduled attempt is gone and the
	// policy's predicate sees no pending restart (checked as state, not by
	// sleeping past the backoff).
	g := mustGet(t, d, keep.ID)
	if g.State != state.Stopped || boots(t, d, keep.ID) != 1 || !g.RestartStatus.NextAttemptAt.IsZero() || d.Restart.RestartPending(keep.ID) {
		t.Fatalf("stopped-in-backoff instance may come back: %s, %d boots, status %+v", g.State, boots(t, d, keep.ID), g.RestartStatus)
	}
}

// Daemon restart mid-backoff: the schedule continues from the persisted
// status, and the instance is started exactly once.
func TestRestartScheduleSurvivesDaemonRestart(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	ref := testimage.Push(t, testimage.Registry(t), "test/flaky", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"if [ -f /data/ran ]; then echo steady; exec sleep 600; fi; mkdir -p /data; touch /data/ran; sync; exit 1"},
	}))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "sched", Image: ref, Size: "256MB", VCPUs: 1,
		RestartPolicy: &restart.Policy{Policy: restart.Always, Backoff: 8 * time.Second, MaxBackoff: 8 * time.Second, StableAfter: 10 * time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	var next time.Time
	waitFor(t, "backoff", 90*time.Second, func() bool {
		g := mustGet(t, d, in.ID)
		if g.State == state.Stopped && g.RestartStatus != nil && !g.RestartStatus.NextAttemptAt.IsZero() {
			next = g.RestartStatus.NextAttemptAt
			return true
		}
		return false
	})
	cfg := d.Config
	d.Close()
	d2, err := daemon.New(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d2.Instances.Delete(context.Background(), in.ID)
		d2.Close()
	})
	if g := mustGet(t, d2, in.ID); g.RestartStatus == nil || !g.RestartStatus.NextAttemptAt.Equal(next) {
		t.Fatalf("schedule not kept: %+v (was %v)", g.RestartStatus, next)
	}
	res, err := d2.Instances.WaitForState(ctx, in.ID, []state.State{state.Running}, 2*time.Minute)
	if err != nil || res.State != state.Running {
		t.Fatalf("wait: %v %+v", err, res)
	}
	if early := time.Until(next); early > time.Second {
		t.Fatalf("restarted %s before the persisted time", early)
	}
	// Exactly one attempt was recorded (each attempt counts under the
	// instance lock before it starts) and none is left pending.
	waitFor(t, "the attempt recorded", 10*time.Second, func() bool {
		g := mustGet(t, d2, in.ID)
		return g.RestartStatus != nil && g.RestartStatus.NextAttemptAt.IsZero()
	})
	if g := mustGet(t, d2, in.ID); g.RestartStatus.Attempts != 1 || d2.Restart.RestartPending(in.ID) {
		t.Fatalf("want exactly one restart attempt and none pending (no double start): %+v", g.RestartStatus)
	}
	if n := boots(t, d2, in.ID); n != 2 {
		t.Fatalf("%d boots, want exactly 2 (no double start)", n)
	}
}

// A health check that starts failing gets the VM restarted (stop+start) and
// healthy again. Exec checks go through the guest agent, so no network is
// needed; the HTTP variant runs in the networking test.
func TestHealthCheckRestartsUnhealthyVM(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	// First boot: healthy for a few seconds, then the health file goes
	// away. Later boots stay healthy.
	ref := testimage.Push(t, testimage.Registry(t), "test/sick", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd: []string{"touch /tmp/healthy; if [ ! -f /data/sick-once ]; then mkdir -p /data; touch /data/sick-once; sync; " +
			"(sleep 6; rm -f /tmp/healthy; echo going-unhealthy) & fi; exec sleep 600"},
	}))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "sick", Image: ref, Size: "256MB", VCPUs: 1,
		RestartPolicy: &restart.Policy{Policy: restart.OnFailure, Backoff: time.Second, MaxBackoff: time.Second, StableAfter: 10 * time.Minute},
		HealthCheck: &health.Check{Type: health.Exec, Command: []string{"test", "-f", "/tmp/healthy"},
			Interval: time.Second, Timeout: time.Second, StartPeriod: 0, FailureThreshold: 2, SuccessThreshold: 1}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "healthy", 90*time.Second, func() bool {
		g := mustGet(t, d, in.ID)
		return g.HealthStatus != nil && g.HealthStatus.Status == health.Healthy
	})
	waitFor(t, "restart after unhealthy", 2*time.Minute, func() bool {
		g := mustGet(t, d, in.ID)
		return boots(t, d, in.ID) == 2 && g.State == state.Running && g.HealthStatus != nil && g.HealthStatus.Status == health.Healthy
	})
	g := mustGet(t, d, in.ID)
	if g.RestartStatus == nil || g.RestartStatus.LastReason != restart.ReasonHealthCheck {
		t.Fatalf("restart status %+v", g.RestartStatus)
	}
	if !strings.Contains(serialLog(t, d, in.ID), "going-unhealthy") {
		t.Fatal("the first boot never became unhealthy")
	}
}
