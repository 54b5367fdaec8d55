package eventsprom

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"hypeman/internal/events"
	"hypeman/internal/instances/state"
)

func TestCountersThroughTheBus(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	bus := events.New(events.Options{Metrics: m})
	defer bus.Close()
	sub := bus.Subscribe(events.SubscribeOptions{Buffer: 1, Consumer: "sse"})
	for range 3 {
		if _, err := bus.Publish(events.StateChange("a", state.Running, state.Paused, "")); err != nil {
			t.Fatal(err)
		}
	}
	<-sub.C()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range mt.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			got[key] = mt.GetCounter().GetValue()
		}
	}
	if got[PublishedName] != 3 || got[DroppedName+",consumer=sse,reason=buffer_full"] != 1 || len(got) != 2 {
		t.Fatalf("metrics: %v", got)
	}
	if _, err := New(reg); err == nil {
		t.Fatal("double registration not reported")
	}
}
