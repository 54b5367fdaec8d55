package metrics

import "github.com/prometheus/client_golang/prometheus"

// AutoStandby is the Prometheus side of the auto-standby controller
// (autostandby.Metrics).
type AutoStandby struct {
	standbys *prometheus.CounterVec
	holds    prometheus.Counter
}

// NewAutoStandby registers the auto-standby families on m.
func (m *Metrics) NewAutoStandby() *AutoStandby {
	a := &AutoStandby{
		standbys: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hypeman_auto_standbys_total",
			Help: "Standbys attempted by auto-standby, by result (ok; busy: a connection appeared while paused, resumed; error).",
		}, []string{"result"}),
		holds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hypeman_auto_standby_holds_total", Help: "Auto-standby holds granted.",
		}),
	}
	m.Registry.MustRegister(a.standbys, a.holds)
	return a
}

// AutoStandby implements autostandby.Metrics.
func (a *AutoStandby) AutoStandby(result string) { a.standbys.WithLabelValues(result).Inc() }

// AutoStandbyHold implements autostandby.Metrics.
func (a *AutoStandby) AutoStandbyHold() { a.holds.Inc() }
