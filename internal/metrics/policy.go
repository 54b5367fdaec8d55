package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"hypeman/internal/health"
	"hypeman/internal/restart"
)

// Policy is the Prometheus side of the restart and health controllers
// (restart.Metrics and health.Metrics).
type Policy struct {
	restarts      *prometheus.CounterVec
	blocked       *prometheus.CounterVec
	backoff       *prometheus.HistogramVec
	checks        *prometheus.CounterVec
	checkDuration *prometheus.HistogramVec
}

// NewPolicy registers the restart and health check families on m.
func (m *Metrics) NewPolicy() *Policy {
	p := &Policy{
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hypeman_restarts_total", Help: "Restarts started by the restart policy, by reason and result.",
		}, []string{"reason", "result"}),
		blocked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hypeman_restarts_blocked_total", Help: "Instances whose restarts were blocked, by reason.",
		}, []string{"reason"}),
		backoff: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "hypeman_restart_backoff_seconds", Help: "Time an instance spent stopped in backoff before its restart.",
			Buckets: []float64{1, 2.5, 5, 10, 20, 40, 80, 160, 300, 600},
		}, []string{"reason"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hypeman_health_checks_total", Help: "Health check results by type and outcome.",
		}, []string{"type", "outcome"}),
		checkDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "hypeman_health_check_duration_seconds", Help: "Health check duration by type.",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2, 5},
		}, []string{"type"}),
	}
	m.Registry.MustRegister(p.restarts, p.blocked, p.backoff, p.checks, p.checkDuration)
	return p
}

// RestartAttempted implements restart.Metrics.
func (p *Policy) RestartAttempted(reason restart.Reason, ok bool) {
	result := "ok"
	if !ok {
		result = "error"
	}
	p.restarts.WithLabelValues(string(reason), result).Inc()
}

// RestartBlocked implements restart.Metrics.
func (p *Policy) RestartBlocked(reason restart.BlockedReason) {
	p.blocked.WithLabelValues(string(reason)).Inc()
}

// BackoffObserved implements restart.Metrics.
func (p *Policy) BackoffObserved(reason restart.Reason, d time.Duration) {
	p.backoff.WithLabelValues(string(reason)).Observe(d.Seconds())
}

// CheckResult implements health.Metrics.
func (p *Policy) CheckResult(t health.Type, o health.Outcome, d time.Duration) {
	p.checks.WithLabelValues(string(t), string(o)).Inc()
	p.checkDuration.WithLabelValues(string(t)).Observe(d.Seconds())
}
