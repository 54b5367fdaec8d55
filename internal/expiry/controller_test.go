package expiry_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/events/eventstest"
	"hypeman/internal/expiry"
	"hypeman/internal/instances/state"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeInstances keeps deadlines in memory, with the manager's contract:
// DeleteExpired re-checks the deadline under a lock and a missing instance
// is (false, nil).
type fakeInstances struct {
	mu      sync.Mutex
	at      map[string]time.Time
	deletes map[string]int // successful deletes per id
	calls   int
}

func newFake() *fakeInstances {
	return &fakeInstances{at: map[string]time.Time{}, deletes: map[string]int{}}
}

func (f *fakeInstances) set(id string, at time.Time) {
	f.mu.Lock()
	f.at[id] = at
	f.mu.Unlock()
}

func (f *fakeInstances) ListExpiring(context.Context) ([]expiry.Item, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []expiry.Item
	for id, at := range f.at {
		out = append(out, expiry.Item{ID: id, At: at})
	}
	return out, nil
}

func (f *fakeInstances) ExpiryOf(_ context.Context, id string) (time.Time, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	at, ok := f.at[id]
	if !ok {
		return time.Time{}, false, errors.New("not found")
	}
	return at, true, nil
}

func (f *fakeInstances) DeleteExpired(_ context.Context, id string, now time.Time) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	at, ok := f.at[id]
	if !ok || at.After(now) {
		return false, nil
	}
	delete(f.at, id)
	f.deletes[id]++
	return true, nil
}

func (f *fakeInstances) deleted(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.deletes[id]
}

func (f *fakeInstances) exists(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.at[id]
	return ok
}

type countMetrics struct {
	mu     sync.Mutex
	ok, ko int
}

func (m *countMetrics) Expired(ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ok {
		m.ok++
	} else {
		m.ko++
	}
}

// start runs a controller until the test ends and returns a stop function
// that waits for Run to return.
func start(t *testing.T, f *fakeInstances, clk *eventstest.Clock, bus *events.Bus, m expiry.Metrics) (*expiry.Controller, func()) {
	t.Helper()
	c, err := expiry.New(expiry.Config{Instances: f, Events: bus, Clock: clk, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return c, stop
}

func waitTimers(t *testing.T, clk *eventstest.Clock, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := clk.WaitTimers(ctx, n); err != nil {
		t.Fatalf("controller never armed its timer: %v", err)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestDeletesWhenTTLPasses(t *testing.T) {
	clk := eventstest.NewClock(t0)
	bus := events.New(events.Options{Clock: clk})
	defer bus.Close()
	f := newFake()
	f.set("a", t0.Add(5*time.Second))
	f.set("b", t0.Add(time.Hour))
	m := &countMetrics{}
	start(t, f, clk, bus, m)
	waitTimers(t, clk, 1)
	clk.Advance(4 * time.Second) // not due yet: the timer does not fire
	if f.deleted("a") != 0 || !f.exists("a") {
		t.Fatal("deleted before its deadline")
	}
	clk.Advance(time.Second)
	eventually(t, "a deleted", func() bool { return f.deleted("a") == 1 })
	waitTimers(t, clk, 1) // re-armed for b
	if !f.exists("b") {
		t.Fatal("b (expires in an hour) was deleted")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ok != 1 || m.ko != 0 {
		t.Fatalf("metrics ok=%d error=%d, want 1/0", m.ok, m.ko)
	}
}

func TestRestartDeletesOverdueOnceAndRearms(t *testing.T) {
	clk := eventstest.NewClock(t0)
	bus := events.New(events.Options{Clock: clk})
	defer bus.Close()
	f := newFake()
	// Expired while the daemon was down, and one still in the future.
	f.set("late", t0.Add(-time.Minute))
	f.set("soon", t0.Add(10*time.Second))
	_, stop := start(t, f, clk, bus, nil)
	eventually(t, "overdue instance deleted at start", func() bool { return f.deleted("late") == 1 })
	waitTimers(t, clk, 1)
	stop()
	// A second daemon start over the same state: nothing is due, the
	// deleted instance is not deleted again; the future one is re-armed
	// from its persisted deadline.
	_, stop2 := start(t, f, clk, bus, nil)
	waitTimers(t, clk, 1)
	if f.deleted("late") != 1 || f.deleted("soon") != 0 {
		t.Fatalf("deletes after restart: late=%d soon=%d", f.deleted("late"), f.deleted("soon"))
	}
	clk.Advance(10 * time.Second)
	eventually(t, "soon deleted after restart", func() bool { return f.deleted("soon") == 1 })
	stop2()
	if f.deleted("late") != 1 || f.deleted("soon") != 1 {
		t.Fatalf("an instance was deleted twice: %v", f.deletes)
	}
}

func TestRefreshFollowsAnExtendedDeadline(t *testing.T) {
	clk := eventstest.NewClock(t0)
	bus := events.New(events.Options{Clock: clk})
	defer bus.Close()
	f := newFake()
	f.set("a", t0.Add(5*time.Second))
	c, _ := start(t, f, clk, bus, nil)
	waitTimers(t, clk, 1)
	// PATCH ttl=1h: the manager persisted the new deadline and calls
	// Refresh. Even if the old timer fires, DeleteExpired's locked check
	// refuses.
	f.set("a", t0.Add(time.Hour))
	c.Refresh("a")
	clk.Advance(10 * time.Second)
	waitTimers(t, clk, 1)
	if f.deleted("a") != 0 {
		t.Fatal("deleted at the old deadline after the ttl was extended")
	}
	clk.Advance(time.Hour)
	eventually(t, "deleted at the new deadline", func() bool { return f.deleted("a") == 1 })
}

func TestNewInstanceEventArmsIt(t *testing.T) {
	clk := eventstest.NewClock(t0)
	bus := events.New(events.Options{Clock: clk})
	defer bus.Close()
	f := newFake()
	start(t, f, clk, bus, nil)
	// Created with a ttl after the controller started: its first
	// lifecycle event makes the controller read its deadline.
	f.set("new", t0.Add(3*time.Second))
	if _, err := bus.Publish(events.StateChange("new", "", state.Created, "created")); err != nil {
		t.Fatal(err)
	}
	waitTimers(t, clk, 1)
	clk.Advance(3 * time.Second)
	eventually(t, "new instance deleted", func() bool { return f.deleted("new") == 1 })
}
