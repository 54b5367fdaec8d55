package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Wake is the Prometheus side of ingress wake on request
// (ingress.WakeMetrics): wakes by the state woken from and result, and
// their latency (from the first held request to Running).
type Wake struct {
	total    *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewWake registers the wake families on m.
func (m *Metrics) NewWake() *Wake {
	w := &Wake{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hypeman_ingress_wakes_total",
			Help: "Instances woken by ingress requests (one per wake, however many requests it held), by state woken from and result (ok, refused, failed, timeout).",
		}, []string{"from", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hypeman_ingress_wake_duration_seconds",
			Help:    "Time from the first request finding its target asleep to the target Running (or the wake failing), by state woken from and result.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60},
		}, []string{"from", "result"}),
	}
	m.Registry.MustRegister(w.total, w.duration)
	return w
}

// WakeFinished implements ingress.WakeMetrics.
func (w *Wake) WakeFinished(from, result string, d time.Duration) {
	if from == "" {
		from = "unknown"
	}
	w.total.WithLabelValues(from, result).Inc()
	w.duration.WithLabelValues(from, result).Observe(d.Seconds())
}
