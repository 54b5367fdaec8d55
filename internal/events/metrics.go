package events

// Drop reasons used as the "reason" label of the dropped-events counter.
const (
	// DropBufferFull: the subscriber's buffer was full; its subscription was
	// closed with a *LagError.
	DropBufferFull = "buffer_full"
)

// Metrics receives the bus's counters. Implementations must be safe for
// concurrent use, fast, and must not call back into the bus (they are
// called with the bus lock held). eventsprom.New adapts Prometheus.
type Metrics interface {
	// EventPublished counts one published event (hypeman_events_published_total).
	EventPublished()
	// EventDropped counts one event a subscriber did not receive
	// (hypeman_events_dropped_total{consumer,reason}).
	EventDropped(consumer, reason string)
}

type nopMetrics struct{}

func (nopMetrics) EventPublished()                      {}
func (nopMetrics) EventDropped(consumer, reason string) {}
