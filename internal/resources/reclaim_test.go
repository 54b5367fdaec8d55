package resources

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// fakeGuests moves a guest's memory to its target at once, unless stuck.
type fakeGuests struct {
	mu     sync.Mutex
	guests []BalloonGuest
	mem    map[string]int64
	stuck  map[string]bool // never moves
	sets   []string
}

func (f *fakeGuests) BalloonGuests(context.Context) ([]BalloonGuest, error) { return f.guests, nil }
func (f *fakeGuests) GuestMemory(_ context.Context, id string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.mem[id]
	if !ok {
		return 0, errors.New("not running")
	}
	return m, nil
}
func (f *fakeGuests) SetGuestMemoryTarget(_ context.Context, id string, target int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.mem[id]; !ok {
		return errors.New("not running")
	}
	f.sets = append(f.sets, fmt.Sprintf("%s=%d", id, target>>20))
	if !f.stuck[id] {
		f.mem[id] = target
	}
	return nil
}

const mib = 1 << 20

func newFakeGuests() *fakeGuests {
	return &fakeGuests{
		guests: []BalloonGuest{
			{InstanceID: "a", InstanceName: "a", Hypervisor: "qemu", AssignedBytes: 2048 * mib, FloorBytes: 512 * mib},
			{InstanceID: "b", InstanceName: "b", Hypervisor: "qemu", AssignedBytes: 1024 * mib, FloorBytes: 512 * mib},
			{InstanceID: "c", InstanceName: "c", Hypervisor: "qemu", AssignedBytes: 1024 * mib, FloorBytes: 1024 * mib},
		},
		// a can give 1024, b 256, c nothing.
		mem:   map[string]int64{"a": 1536 * mib, "b": 768 * mib, "c": 1024 * mib},
		stuck: map[string]bool{},
	}
}

// timers is a fake AfterFunc: the test fires them.
type timers struct {
	mu  sync.Mutex
	fns []func()
	ds  []time.Duration
}

func (tm *timers) after(d time.Duration, f func()) func() bool {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	i := len(tm.fns)
	tm.fns = append(tm.fns, f)
	tm.ds = append(tm.ds, d)
	return func() bool {
		tm.mu.Lock()
		defer tm.mu.Unlock()
		stopped := tm.fns[i] != nil
		tm.fns[i] = nil
		return stopped
	}
}

func (tm *timers) fire(i int) {
	tm.mu.Lock()
	f := tm.fns[i]
	tm.mu.Unlock()
	if f != nil {
		f()
	}
}

func newTestReclaimer(t *testing.T, g Guests, tm *timers) *Reclaimer {
	t.Helper()
	r, err := NewReclaimer(ReclaimerConfig{Guests: g, AfterFunc: tm.after,
		HostMemory: func() (int64, int64, error) { return 10 << 30, 2048 * mib, nil }, Settle: 50 * time.Millisecond, Poll: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestPlanBiggestFirst(t *testing.T) {
	g := newFakeGuests()
	base := g.mem
	planned, targets := Plan(300*mib, g.guests, base)
	if planned != 300*mib || targets["a"] != 1236*mib || targets["b"] != 768*mib || targets["c"] != 1024*mib {
		t.Fatalf("300 MiB: %d %v", planned>>20, targets)
	}
	planned, targets = Plan(1200*mib, g.guests, base)
	if planned != 1200*mib || targets["a"] != 512*mib || targets["b"] != 592*mib {
		t.Fatalf("1200 MiB: %d %v", planned>>20, targets)
	}
	// Never below a floor, whatever is asked.
	planned, targets = Plan(100<<30, g.guests, base)
	if planned != 1280*mib || targets["a"] != 512*mib || targets["b"] != 512*mib || targets["c"] != 1024*mib {
		t.Fatalf("everything: %d %v", planned>>20, targets)
	}
	// Odd byte counts round up to whole MiB.
	if planned, _ := Plan(mib+1, g.guests, base); planned != 2*mib {
		t.Errorf("rounding: %d", planned)
	}
}

func TestReclaimApplyHoldAndExpire(t *testing.T) {
	ctx := context.Background()
	g := newFakeGuests()
	tm := &timers{}
	r := newTestReclaimer(t, g, tm)

	dry, err := r.Reclaim(ctx, ReclaimRequest{ReclaimBytes: 300 * mib, DryRun: true})
	if err != nil || dry.PlannedBytes != 300*mib || dry.AppliedBytes != 0 || len(g.sets) != 0 || len(tm.fns) != 0 || dry.HoldUntil != nil {
		t.Fatalf("dry run: %+v %v sets %v", dry, err, g.sets)
	}
	if dry.Pressure != "healthy" || dry.HostAvailableBytes != 2048*mib || dry.Actions[0].Status != StatusPlanned || dry.Actions[2].Status != StatusUnchanged {
		t.Errorf("host: %+v", dry)
	}
	res, err := r.Reclaim(ctx, ReclaimRequest{ReclaimBytes: 1100 * mib, HoldFor: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if res.PlannedBytes != 1100*mib || res.AppliedBytes != 1100*mib || res.HoldUntil == nil || len(res.Actions) != 3 {
		t.Fatalf("reclaim: %+v", res)
	}
	byID := map[string]ReclaimAction{}
	for _, a := range res.Actions {
		byID[a.InstanceID] = a
	}
	if a := byID["a"]; a.Status != StatusApplied || a.TargetBytes != 512*mib || a.AppliedBytes != 1024*mib || a.PreviousTargetBytes != 1536*mib {
		t.Errorf("a: %+v", a)
	}
	if b := byID["b"]; b.Status != StatusApplied || b.TargetBytes != 692*mib || b.AppliedBytes != 76*mib {
		t.Errorf("b: %+v", b)
	}
	if c := byID["c"]; c.Status != StatusUnchanged || c.AppliedBytes != 0 {
		t.Errorf("c: %+v", c)
	}
	if tm.ds[0] != time.Minute {
		t.Errorf("hold timer %v", tm.ds[0])
	}

	// A new reclaim replaces the hold: planned from the pre-hold memory,
	// so 100 MiB now means a gives 100 back and b gets all of its back.
	res, err = r.Reclaim(ctx, ReclaimRequest{ReclaimBytes: 100 * mib})
	if err != nil {
		t.Fatal(err)
	}
	if g.mem["a"] != 1436*mib || g.mem["b"] != 768*mib || res.AppliedBytes != 100*mib {
		t.Fatalf("replaced hold: mem %v, %+v", g.mem, res)
	}
	if len(tm.fns) != 2 || tm.fns[0] != nil || tm.ds[1] != DefaultHoldFor {
		t.Fatalf("old timer not stopped / new default hold: %d %v", len(tm.fns), tm.ds)
	}
	tm.fire(0) // a stale timer does nothing
	if g.mem["a"] != 1436*mib {
		t.Fatal("stale hold restored memory")
	}
	tm.fire(1)
	if g.mem["a"] != 1536*mib || g.mem["b"] != 768*mib || !r.HoldUntil().IsZero() {
		t.Fatalf("after the hold: %v", g.mem)
	}
}

func TestReclaimPartialAndErrors(t *testing.T) {
	ctx := context.Background()
	g := newFakeGuests()
	g.stuck["a"] = true
	delete(g.mem, "b") // stopped between listing and reading
	tm := &timers{}
	r := newTestReclaimer(t, g, tm)
	r.cfg.HostMemory = func() (int64, int64, error) { return 10 << 30, 100 * mib, nil }
	res, err := r.Reclaim(ctx, ReclaimRequest{ReclaimBytes: 500 * mib, HoldFor: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]ReclaimAction{}
	for _, a := range res.Actions {
		byID[a.InstanceID] = a
	}
	if a := byID["a"]; a.Status != StatusPartial || a.AppliedBytes != 0 || a.TargetBytes != 1036*mib {
		t.Errorf("stuck guest: %+v", a)
	}
	if b := byID["b"]; b.Status != StatusError || b.Error == "" {
		t.Errorf("vanished guest: %+v", b)
	}
	if res.Pressure != "pressure" {
		t.Errorf("pressure: %s", res.Pressure)
	}
	if _, err := r.Reclaim(ctx, ReclaimRequest{ReclaimBytes: -1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("negative: %v", err)
	}
	if _, err := r.Reclaim(ctx, ReclaimRequest{ReclaimBytes: 1, HoldFor: 48 * time.Hour}); !errors.Is(err, ErrInvalid) {
		t.Errorf("long hold: %v", err)
	}
	r.Close()
	if len(tm.fns) != 1 || tm.fns[0] != nil {
		t.Error("Close left the hold timer")
	}
}

func TestParseHoldFor(t *testing.T) {
	for in, want := range map[string]time.Duration{"": DefaultHoldFor, "30s": 30 * time.Second, "24h": 24 * time.Hour} {
		if d, err := ParseHoldFor(in); err != nil || d != want {
			t.Errorf("%q: %v %v", in, d, err)
		}
	}
	for _, bad := range []string{"5", "soon", "0s", "-1m", "25h"} {
		if _, err := ParseHoldFor(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q accepted: %v", bad, err)
		}
	}
}
