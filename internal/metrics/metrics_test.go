package metrics

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"hypeman/internal/events"
	"hypeman/internal/instances/state"
)

func TestTransitionsCountedFromBus(t *testing.T) {
	m := New()
	bus := events.New(events.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.CountTransitions(ctx, bus, slog.Default()); close(done) }()
	for bus.Subscribers("") == 0 {
		time.Sleep(time.Millisecond)
	}
	bus.Publish(events.StateChange("a", state.Stopped, state.Initializing, "start"))
	bus.Publish(events.StateChange("a", state.Initializing, state.Running, "marker"))
	bus.Publish(events.Deleted("a", state.Running, "deleted"))
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(m.transitions.WithLabelValues("Running", "deleted")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("deleted transition not counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if v := testutil.ToFloat64(m.transitions.WithLabelValues("Initializing", "Running")); v != 1 {
		t.Fatalf("Initializing→Running = %v", v)
	}
	cancel()
	<-done
	bus.Close()
}

func TestOperationsAndGauges(t *testing.T) {
	m := New()
	m.ObserveOperation("create", 2*time.Second, nil)
	m.ObserveOperation("create", time.Second, errors.New("x"))
	m.ObserveTimeToRunning(3 * time.Second)
	m.ImagePullFinished(true)
	m.RegisterGauges(func(context.Context) map[state.State]int { return map[state.State]int{state.Running: 2} },
		func(context.Context) map[string]int { return map[string]int{"ready": 1} })
	out, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range out {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"hypeman_instance_operation_duration_seconds", "hypeman_instance_time_to_running_seconds", "hypeman_instances", "hypeman_images", "hypeman_image_pulls_total"} {
		if !names[want] {
			t.Errorf("missing %s", want)
		}
	}
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(`
# HELP hypeman_instances Instances by state.
# TYPE hypeman_instances gauge
hypeman_instances{state="Created"} 0
hypeman_instances{state="Initializing"} 0
hypeman_instances{state="Paused"} 0
hypeman_instances{state="Running"} 2
hypeman_instances{state="Shutdown"} 0
hypeman_instances{state="Standby"} 0
hypeman_instances{state="Stopped"} 0
hypeman_instances{state="Template"} 0
hypeman_instances{state="Unknown"} 0
`), "hypeman_instances"); err != nil {
		t.Fatal(err)
	}
}

func TestWakeFamilies(t *testing.T) {
	m := New()
	w := m.NewWake()
	w.WakeFinished("Standby", "ok", 400*time.Millisecond)
	w.WakeFinished("Standby", "ok", 600*time.Millisecond)
	w.WakeFinished("Stopped", "refused", time.Millisecond)
	if v := testutil.ToFloat64(w.total.WithLabelValues("Standby", "ok")); v != 2 {
		t.Fatalf("wakes Standby/ok = %v", v)
	}
	if v := testutil.ToFloat64(w.total.WithLabelValues("Stopped", "refused")); v != 1 {
		t.Fatalf("wakes Stopped/refused = %v", v)
	}
	if n := testutil.CollectAndCount(w.duration, "hypeman_ingress_wake_duration_seconds"); n != 2 {
		t.Fatalf("%d wake latency series, want 2", n)
	}
}
