package daemon_test

import (
	"context"
	"testing"
	"time"

	"hypeman/internal/daemon"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/resources"
)

// waitGuestMemory polls the balloon until cond(actual) holds.
func waitGuestMemory(t *testing.T, d *daemon.Daemon, id, what string, cond func(int64) bool) int64 {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := d.Instances.GuestMemory(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if cond(got) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest memory %d MiB never became %s", got>>20, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Issue 12 reclaim with a real guest: a 256MB+512MB guest grown to 768MB
// gives 384MB back through its balloon (the guest's memory drops), a dry
// run changes nothing, and the hold ends by giving the memory back.
func TestReclaimMemoryBalloon(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	ref := sleeper(t)
	ctx := context.Background()
	const size, hotplug = 256 << 20, 512 << 20
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "reclaim", Image: ref, Size: "256MB", HotplugSize: "512MB", VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, d, in.ID, state.Running, bootTimeout)
	if err := d.Instances.SetMemoryTarget(ctx, in.ID, size+hotplug); err != nil {
		t.Fatal(err)
	}
	waitGuestMemory(t, d, in.ID, "size + hotplug", func(n int64) bool { return n == size+hotplug })

	dry, err := d.Reclaimer.Reclaim(ctx, resources.ReclaimRequest{ReclaimBytes: 384 << 20, DryRun: true})
	if err != nil || dry.PlannedBytes != 384<<20 || dry.AppliedBytes != 0 || len(dry.Actions) != 1 || dry.Actions[0].Status != resources.StatusPlanned {
		t.Fatalf("dry run: %+v %v", dry, err)
	}
	if got, _ := d.Instances.GuestMemory(ctx, in.ID); got != size+hotplug {
		t.Fatalf("a dry run moved the balloon: %d MiB", got>>20)
	}

	start := time.Now()
	res, err := d.Reclaimer.Reclaim(ctx, resources.ReclaimRequest{ReclaimBytes: 384 << 20, HoldFor: 3 * time.Second, Reason: "test"})
	if err != nil {
		t.Fatal(err)
	}
	a := res.Actions[0]
	if a.PreviousTargetBytes != size+hotplug || a.TargetBytes != size+hotplug-384<<20 || a.ProtectedFloorBytes != size ||
		a.Status != resources.StatusApplied || res.AppliedBytes < 383<<20 || res.HoldUntil == nil {
		t.Fatalf("reclaim: %+v action %+v", res, a)
	}
	if got, _ := d.Instances.GuestMemory(ctx, in.ID); got > size+hotplug-383<<20 {
		t.Fatalf("guest memory %d MiB after the reclaim", got>>20)
	}
	t.Logf("reclaimed %d MiB from a TCG guest in %v (host MemAvailable %d MiB, %s)",
		res.AppliedBytes>>20, time.Since(start).Round(time.Millisecond), res.HostAvailableBytes>>20, res.Pressure)

	// Asking more than the guest can give stops at its floor.
	if p, _ := d.Reclaimer.Reclaim(ctx, resources.ReclaimRequest{ReclaimBytes: 4 << 30, DryRun: true}); p.PlannedBytes != hotplug || p.Actions[0].PlannedTargetBytes != size {
		t.Fatalf("over-ask: %+v", p)
	}
	// The hold ends: the guest gets its memory back.
	waitGuestMemory(t, d, in.ID, "back to size + hotplug after the hold", func(n int64) bool { return n == size+hotplug })
	if !d.Reclaimer.HoldUntil().IsZero() {
		t.Error("hold still reported after it ended")
	}
}
