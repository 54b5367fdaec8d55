// Package metrics owns hypemand's Prometheus registry and the product
// metrics that are not local to one package: instance operation durations,
// time to Running, state transitions, instances by state and image pulls.
//
// Why here: the manager and the image store only report facts through small
// interfaces (or the event bus); turning facts into metric families with
// stable names and labels is done once, in one place, so dashboards do not
// break when a package is refactored. Transitions are counted from the event
// bus (the same stream the wait endpoint uses), so metrics and API agree.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"hypeman/internal/events"
	"hypeman/internal/instances/state"
)

// Metrics is the daemon's registry plus the families fed by callers.
type Metrics struct {
	Registry      *prometheus.Registry
	opDuration    *prometheus.HistogramVec
	timeToRunning prometheus.Histogram
	transitions   *prometheus.CounterVec
	imagePulls    *prometheus.CounterVec
	warm          *prometheus.CounterVec
}

// New creates the registry with Go and process collectors.
func New() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{
		Registry: r,
		opDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hypeman_instance_operation_duration_seconds",
			Help:    "Duration of instance lifecycle operations (create, start, stop, delete, ...).",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"operation", "result"}),
		timeToRunning: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hypeman_instance_time_to_running_seconds",
			Help:    "Time from VM launch to the guest program starting.",
			Buckets: []float64{.25, .5, 1, 2, 3, 4, 5, 7.5, 10, 15, 30, 60},
		}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hypeman_instance_state_transitions_total",
			Help: "Instance state transitions observed on the lifecycle bus.",
		}, []string{"from", "to"}),
		imagePulls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hypeman_image_pulls_total",
			Help: "Image pulls/imports that finished, by result (ready or failed).",
		}, []string{"result"}),
		warm: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hypeman_warm_events_total",
			Help: "Warm create template pool events: hit, miss, build, build_failed, evict, invalidate.",
		}, []string{"event"}),
	}
	r.MustRegister(m.opDuration, m.timeToRunning, m.transitions, m.imagePulls, m.warm)
	return m
}

// ObserveOperation records one lifecycle operation (instances.Metrics).
func (m *Metrics) ObserveOperation(op string, d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.opDuration.WithLabelValues(op, result).Observe(d.Seconds())
}

// ObserveTimeToRunning records launch → program start (instances.Metrics).
func (m *Metrics) ObserveTimeToRunning(d time.Duration) { m.timeToRunning.Observe(d.Seconds()) }

// WarmEvent counts a warm template pool event (implements warm.Metrics).
func (m *Metrics) WarmEvent(event string) { m.warm.WithLabelValues(event).Inc() }

// ImagePullFinished counts a finished pull.
func (m *Metrics) ImagePullFinished(ok bool) {
	if ok {
		m.imagePulls.WithLabelValues("ready").Inc()
	} else {
		m.imagePulls.WithLabelValues("failed").Inc()
	}
}

// CountTransitions follows the bus until ctx ends, counting transitions.
// A lagging subscription resumes from the bus history.
func (m *Metrics) CountTransitions(ctx context.Context, bus *events.Bus, log *slog.Logger) {
	var last uint64
	for ctx.Err() == nil {
		backlog, sub, ok := bus.SubscribeSince(last, events.SubscribeOptions{Consumer: "metrics", Buffer: 256})
		if !ok && last != 0 {
			log.Warn("metrics missed lifecycle events (history exhausted)")
		}
		for _, ev := range backlog {
			m.count(ev)
			last = ev.ID
		}
		func() {
			defer sub.Close()
			for {
				select {
				case <-ctx.Done():
					return
				case ev, open := <-sub.C():
					if !open {
						return
					}
					m.count(ev)
					last = ev.ID
				}
			}
		}()
		if err := sub.Err(); errors.Is(err, events.ErrBusClosed) {
			return
		}
		if last == 0 {
			last = bus.LastID()
		}
	}
}

func (m *Metrics) count(ev events.Event) {
	to := string(ev.To)
	if ev.Type == events.TypeDeleted {
		to = "deleted"
	}
	from := string(ev.From)
	if from == "" {
		from = "none"
	}
	m.transitions.WithLabelValues(from, to).Inc()
}

// StateCounter returns the number of instances in each state.
type StateCounter func(ctx context.Context) map[state.State]int

// StatusCounter returns the number of images in each status.
type StatusCounter func(ctx context.Context) map[string]int

// RegisterGauges adds scrape-time gauges for instances by state and images
// by status (computed when Prometheus scrapes, never stale).
func (m *Metrics) RegisterGauges(instances StateCounter, images StatusCounter) {
	m.Registry.MustRegister(&gaugeCollector{inst: instances, img: images,
		instDesc: prometheus.NewDesc("hypeman_instances", "Instances by state.", []string{"state"}, nil),
		imgDesc:  prometheus.NewDesc("hypeman_images", "Images by status.", []string{"status"}, nil),
	})
}

type gaugeCollector struct {
	inst              StateCounter
	img               StatusCounter
	instDesc, imgDesc *prometheus.Desc
}

func (c *gaugeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.instDesc; ch <- c.imgDesc }

func (c *gaugeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts := c.inst(ctx)
	for _, s := range state.All() {
		ch <- prometheus.MustNewConstMetric(c.instDesc, prometheus.GaugeValue, float64(counts[s]), string(s))
	}
	for status, n := range c.img(ctx) {
		ch <- prometheus.MustNewConstMetric(c.imgDesc, prometheus.GaugeValue, float64(n), status)
	}
}
