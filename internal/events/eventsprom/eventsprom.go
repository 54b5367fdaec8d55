// Package eventsprom exports the lifecycle event bus's counters to
// Prometheus.
//
// Why separate: package events defines the two-method Metrics interface it
// needs (interfaces belong to the consumer) and stays free of the Prometheus
// dependency; this adapter is the only place that knows metric names.
package eventsprom

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"hypeman/internal/events"
)

// Metric names.
const (
	PublishedName = "hypeman_events_published_total"
	DroppedName   = "hypeman_events_dropped_total"
)

// Metrics implements events.Metrics with Prometheus counters.
type Metrics struct {
	published prometheus.Counter
	dropped   *prometheus.CounterVec
}

var _ events.Metrics = (*Metrics)(nil)

// New creates the counters and registers them on reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: PublishedName,
			Help: "Instance lifecycle events published on the event bus.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: DroppedName,
			Help: "Lifecycle events a subscriber did not receive (its subscription was cut off).",
		}, []string{"consumer", "reason"}),
	}
	for _, c := range []prometheus.Collector{m.published, m.dropped} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register event bus metrics: %w", err)
		}
	}
	return m, nil
}

// EventPublished implements events.Metrics.
func (m *Metrics) EventPublished() { m.published.Inc() }

// EventDropped implements events.Metrics.
func (m *Metrics) EventDropped(consumer, reason string) {
	m.dropped.WithLabelValues(consumer, reason).Inc()
}
