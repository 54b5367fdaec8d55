package daemon_test

import (
	"context"
	"testing"
	"time"

	"hypeman/internal/events/eventstest"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/schedules"
	"hypeman/internal/testutil/testimage"
)

// TestScheduledSnapshotOfRunningInstance drives the schedules controller
// (on a fake clock, against the daemon's real manager and a real VM): each
// run takes a Standby snapshot while the instance keeps running, max_count
// 1 prunes the older one, and the kept snapshot restores with the program's
// memory (its counter continues from the snapshot).
func TestScheduledSnapshotOfRunningInstance(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	host := testimage.Registry(t)
	ref := testimage.Push(t, host, "test/counter", testimage.Busybox(t, counterImage(t)))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "scheduled", Image: ref, Size: "256MB", VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, d, in.ID, state.Running, bootTimeout)
	waitCountAbove(t, d, in.ID, 3)

	clk := eventstest.NewClock(time.Now())
	ctl, err := schedules.New(schedules.Config{Dir: t.TempDir(), Instances: d.Instances, Events: d.Events, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Set(ctx, in.ID, schedules.Request{Interval: "1m", NamePrefix: ptrS("sched"), Retention: schedules.Retention{MaxCount: 1}}); err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ctl.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	armed := func() {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
		defer wcancel()
		if err := clk.WaitTimers(wctx, 1); err != nil {
			t.Fatalf("schedule run did not finish: %v", err)
		}
	}
	var first string
	var atSnap, beforeSnap int
	for run := 1; run <= 2; run++ {
		armed()
		beforeSnap, _ = lastCount(t, d, in.ID)
		t0 := time.Now()
		clk.Advance(time.Minute)
		armed()
		took := time.Since(t0)
		sc, err := ctl.Get(ctx, in.ID)
		if err != nil || sc.LastError != nil || sc.LastSnapshotID == nil {
			t.Fatalf("run %d: %+v %v (last_error %v)", run, sc, err, deref(sc.LastError))
		}
		t.Logf("scheduled run %d (snapshot of a running 256 MB guest, prune) took %v", run, took.Round(time.Millisecond))
		if s := mustGet(t, d, in.ID); s.State != state.Running {
			t.Fatalf("instance after scheduled snapshot: %s", s.State)
		}
		c, _ := lastCount(t, d, in.ID)
		waitCountAbove(t, d, in.ID, c+2) // the program keeps counting
		if run == 1 {
			first = *sc.LastSnapshotID
			continue
		}
		atSnap = c
		list, err := d.Instances.ListSnapshots(ctx, instances.SnapshotFilter{SourceInstanceID: in.ID})
		if err != nil || len(list) != 1 || list[0].ID != *sc.LastSnapshotID || list[0].ID == first || list[0].Kind != instances.SnapshotStandby {
			t.Fatalf("snapshots after two runs with max_count 1: %+v %v (first %s)", list, err, first)
		}
	}
	sc, _ := ctl.Get(ctx, in.ID)
	if _, err := d.Instances.Stop(ctx, in.ID, instances.StopParams{}); err != nil {
		t.Fatal(err)
	}
	offset := len(serialLog(t, d, in.ID))
	if _, err := d.Instances.RestoreSnapshot(ctx, in.ID, *sc.LastSnapshotID, instances.RestoreSnapshotParams{}); err != nil {
		t.Fatal(err)
	}
	waitNewCounts(t, d, in.ID, offset)
	// The restored program continues from the snapshot: between the count
	// before the run and the one just after it (not from 1: memory kept).
	if c := countsAfter(t, d, in.ID, offset); c[0] > atSnap+2 || c[0] < beforeSnap-1 {
		t.Fatalf("restored counter at %d; the scheduled snapshot was taken between %d and %d", c[0], beforeSnap, atSnap)
	}
}

func ptrS(s string) *string { return &s }
