package metrics

import "github.com/prometheus/client_golang/prometheus"

// Expiry implements expiry.Metrics.
type Expiry struct{ deletes *prometheus.CounterVec }

// NewExpiry registers hypeman_expiry_deletes_total{result}.
func (m *Metrics) NewExpiry() *Expiry {
	e := &Expiry{deletes: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hypeman_expiry_deletes_total", Help: "Instances deleted because their ttl / expires_at passed, by result.",
	}, []string{"result"})}
	m.Registry.MustRegister(e.deletes)
	return e
}

// Expired implements expiry.Metrics.
func (e *Expiry) Expired(ok bool) {
	e.deletes.WithLabelValues(okOrError(ok)).Inc()
}

func okOrError(ok bool) string {
	if ok {
		return "ok"
	}
	return "error"
}

// Schedules implements schedules.Metrics.
type Schedules struct {
	runs   *prometheus.CounterVec
	pruned prometheus.Counter
}

// NewSchedules registers hypeman_snapshot_schedule_runs_total{result} and
// hypeman_snapshot_schedule_pruned_total.
func (m *Metrics) NewSchedules() *Schedules {
	s := &Schedules{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hypeman_snapshot_schedule_runs_total", Help: "Scheduled snapshot runs by result (ok, skipped, error).",
		}, []string{"result"}),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hypeman_snapshot_schedule_pruned_total", Help: "Scheduled snapshots deleted by retention.",
		}),
	}
	m.Registry.MustRegister(s.runs, s.pruned)
	return s
}

// Run implements schedules.Metrics.
func (s *Schedules) Run(result string) { s.runs.WithLabelValues(result).Inc() }

// Pruned implements schedules.Metrics.
func (s *Schedules) Pruned(n int) { s.pruned.Add(float64(n)) }
