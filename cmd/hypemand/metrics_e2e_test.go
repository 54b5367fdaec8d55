package main_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/testimage"
)

// scrape reads the daemon's metrics listener and parses the text format.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return mfs
}

// sample sums the family's samples whose labels include want (histograms
// count observations, counters and gauges add values).
func sample(mfs map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	mf := mfs[name]
	if mf == nil {
		return 0
	}
	var sum float64
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		}
	}
	return sum
}

// Issue 11 item 9: after a real create that reaches Running, the metrics
// listener shows the operation histogram, time to Running, the lifecycle
// event counters, the transition counters, the pull counter and the
// instances-by-state gauge with non-zero counts (they were empty on main:
// the manager's and the bus's metrics were never wired).
func TestMetricsAfterRealCreate(t *testing.T) {
	t.Parallel()
	s := e2e.Start(t, "--metrics-listen", "127.0.0.1:0")
	url := s.MetricsURL()
	pushImage(t, s, "apps/idle:v1", testimage.Options{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"exec sleep 3600"}})
	var in instance
	if st, body := s.JSON("POST", "/instances", map[string]any{"name": "metered", "image": "apps/idle:v1", "size": "256MB", "vcpus": 1}, &in); st != http.StatusCreated {
		t.Fatalf("create: %d %s", st, body)
	}
	if st, body := s.Do("GET", "/instances/metered/wait?state=Running&timeout=90s", nil); st != 200 {
		t.Fatalf("wait Running: %d %s\n%s", st, body, s.Logs())
	}
	// Time to Running is observed by the serial watcher, which also
	// publishes the Running event; the transition counter follows the bus
	// asynchronously. Both are visible by the time a stop was observed.
	if st, body := s.JSON("POST", "/instances/metered/stop", nil, &in); st != 200 || in.State != "Stopped" {
		t.Fatalf("stop: %d %s", st, body)
	}

	checks := []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"hypeman_instance_operation_duration_seconds", map[string]string{"operation": "create", "result": "ok"}, 1},
		{"hypeman_instance_operation_duration_seconds", map[string]string{"operation": "stop", "result": "ok"}, 1},
		{"hypeman_instance_time_to_running_seconds", nil, 1},
		// created (Stopped), Initializing, Running, ..., Stopped.
		{"hypeman_events_published_total", nil, 3},
		{"hypeman_instance_state_transitions_total", map[string]string{"to": "Running"}, 1},
		{"hypeman_image_pulls_total", map[string]string{"result": "ready"}, 1},
		{"hypeman_instances", map[string]string{"state": "Stopped"}, 1},
		{"hypeman_http_request_duration_seconds", nil, 1},
	}
	// The transition and pull counters follow the bus and the image store
	// asynchronously: poll (bounded) until every family is there.
	var mfs map[string]*dto.MetricFamily
	var missing []string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		mfs, missing = scrape(t, url), nil
		for _, c := range checks {
			if got := sample(mfs, c.name, c.labels); got < c.min {
				missing = append(missing, fmt.Sprintf("%s%v = %v, want >= %v", c.name, c.labels, got, c.min))
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, m := range missing {
		t.Error(m)
	}
	for _, c := range checks {
		t.Logf("%s%v = %v", c.name, c.labels, sample(mfs, c.name, c.labels))
	}
	if t.Failed() {
		var names []string
		for n := range mfs {
			names = append(names, n)
		}
		t.Logf("families scraped: %v", names)
	}
}
