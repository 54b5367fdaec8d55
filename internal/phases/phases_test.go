package phases

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/instances/state"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func ev(id string, from, to state.State, at time.Time) events.Event {
	return events.Event{Type: events.TypeStateChange, InstanceID: id, From: from, To: to, At: at}
}

func TestLedgerAccumulatesAcrossTransitions(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	c := &clock{t: t0}
	tr, err := Open(filepath.Join(t.TempDir(), "phases.json"), c.now, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr.Observe(ev("a", "", state.Initializing, t0))
	tr.Observe(ev("a", state.Initializing, state.Running, t0.Add(2*time.Second)))
	tr.Observe(ev("a", state.Running, state.Standby, t0.Add(62*time.Second)))
	tr.Observe(ev("a", state.Standby, state.Running, t0.Add(362*time.Second)))
	c.t = t0.Add(372 * time.Second)
	v := tr.View("a", state.Running, time.Time{})
	want := map[string]int64{"initializing": 2000, "running": 70000, "standby": 300000}
	for k, w := range want {
		if v.DurationsMs[k] != w {
			t.Errorf("%s = %d ms, want %d (all: %v)", k, v.DurationsMs[k], w, v.DurationsMs)
		}
	}
	if v.Current != "running" || !v.Since.Equal(t0.Add(362*time.Second)) {
		t.Errorf("current %s since %v", v.Current, v.Since)
	}
}

func TestViewCorrectsMissedTransition(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	c := &clock{t: t0.Add(100 * time.Second)}
	tr, _ := Open(filepath.Join(t.TempDir(), "p.json"), c.now, nil)
	tr.Observe(ev("a", state.Initializing, state.Running, t0))
	// The VM exited at t0+40s while nobody published (daemon down).
	v := tr.View("a", state.Stopped, t0.Add(40*time.Second))
	if v.Current != "stopped" || v.DurationsMs["running"] != 40000 || v.DurationsMs["stopped"] != 60000 {
		t.Fatalf("view %+v", v)
	}
	// Unknown instance: starts its ledger at the hint (or now).
	v = tr.View("b", state.Stopped, time.Time{})
	if v.Current != "stopped" || v.DurationsMs["stopped"] != 0 || !v.Since.Equal(c.t) {
		t.Fatalf("new ledger view %+v", v)
	}
	// A hint in the future or before the ledger's start is clamped.
	tr.Observe(ev("c", "", state.Running, t0.Add(50*time.Second)))
	v = tr.View("c", state.Stopped, t0)
	if v.DurationsMs["running"] != 0 || v.DurationsMs["stopped"] != 50000 {
		t.Fatalf("clamped view %+v", v)
	}
}

func TestPersistAndDelete(t *testing.T) {
	path := filepath.Join(t.TempDir(), "phases.json")
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	c := &clock{t: t0.Add(10 * time.Second)}
	tr, _ := Open(path, c.now, nil)
	tr.Observe(ev("a", "", state.Running, t0))
	tr.Observe(ev("b", "", state.Running, t0))
	tr.Observe(events.Event{Type: events.TypeDeleted, InstanceID: "b", From: state.Running, At: t0})
	if err := tr.Flush(); err != nil {
		t.Fatal(err)
	}
	tr2, err := Open(path, c.now, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v := tr2.View("a", state.Running, time.Time{}); v.DurationsMs["running"] != 10000 || !v.Since.Equal(t0) {
		t.Fatalf("reloaded view %+v", v)
	}
	if _, ok := tr2.ledgers["b"]; ok {
		t.Fatal("deleted instance kept its ledger")
	}
}

func TestRefusesUnknownVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "phases.json")
	if err := writeFile(path, `{"version":9,"instances":{}}`); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, nil, nil); err == nil {
		t.Fatal("version 9 accepted")
	}
}

func TestFollowerAppliesBusEventsAndFlushesOnExit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "phases.json")
	tr, _ := Open(path, nil, nil)
	bus := events.New(events.Options{})
	f := tr.Subscribe(bus)
	// Published before Run starts: must not be lost.
	bus.Publish(ev("a", "", state.Running, time.Now().Add(-time.Second)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		tr.mu.Lock()
		_, ok := tr.ledgers["a"]
		tr.mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("event never applied")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	tr2, err := Open(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tr2.ledgers["a"]; !ok {
		t.Fatal("ledger not flushed on exit")
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o644) }
