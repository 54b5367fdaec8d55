package health_test

import (
	"encoding/json"
	"testing"
	"time"

	"hypeman/internal/health"
)

var boot = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

var (
	ok   = health.Result{OK: true}
	fail = health.Result{Err: "HTTP status 500, want 200"}
)

// step applies results at the given offsets from boot and returns every
// intermediate status.
type step struct {
	at  time.Duration
	res health.Result
}

func run(c health.Check, s health.Status, steps ...step) []health.Status {
	var out []health.Status
	for _, st := range steps {
		s = health.Apply(c, s, st.res, boot.Add(st.at), boot)
		out = append(out, s)
	}
	return out
}

func httpCheck() health.Check {
	c := health.DefaultCheck(health.HTTP)
	c.Port = 8080
	return c
}

func TestApplyStartPeriodFailuresDoNotCount(t *testing.T) {
	c := httpCheck() // start period 30s, failure threshold 3
	got := run(c, health.Status{Status: health.Starting},
		step{10 * time.Second, fail}, step{20 * time.Second, fail}, step{29 * time.Second, fail},
		step{30 * time.Second, fail}, step{40 * time.Second, fail}, step{50 * time.Second, fail})
	for i := range 3 {
		if got[i].Status != health.Starting || got[i].ConsecutiveFailures != 0 {
			t.Fatalf("start-period failure %d counted: %+v", i+1, got[i])
		}
		if got[i].LastError != fail.Err || !got[i].LastFailureAt.Equal(boot.Add([]time.Duration{10, 20, 29}[i]*time.Second)) {
			t.Fatalf("start-period failure %d not recorded: %+v", i+1, got[i])
		}
	}
	if got[3].ConsecutiveFailures != 1 || got[4].ConsecutiveFailures != 2 || got[4].Status != health.Starting {
		t.Fatalf("after the start period: %+v %+v", got[3], got[4])
	}
	if got[5].Status != health.Unhealthy || got[5].ConsecutiveFailures != 3 {
		t.Fatalf("third counted failure: %+v", got[5])
	}
}

func TestApplySuccessEndsStartPeriod(t *testing.T) {
	c := httpCheck()
	got := run(c, health.Status{Status: health.Starting},
		step{5 * time.Second, ok}, step{10 * time.Second, fail}, step{15 * time.Second, fail}, step{20 * time.Second, fail})
	if got[0].Status != health.Healthy || got[0].ConsecutiveSuccesses != 1 || !got[0].LastSuccessAt.Equal(boot.Add(5*time.Second)) {
		t.Fatalf("first success: %+v", got[0])
	}
	if got[1].Status != health.Healthy || got[1].ConsecutiveFailures != 1 || got[1].ConsecutiveSuccesses != 0 {
		t.Fatalf("failure after the start period ended early must count, status unchanged below threshold: %+v", got[1])
	}
	if got[3].Status != health.Unhealthy {
		t.Fatalf("3 failures inside the nominal start period after a success: %+v", got[3])
	}
}

func TestApplyThresholds(t *testing.T) {
	c := httpCheck()
	c.StartPeriod = 0
	c.SuccessThreshold, c.FailureThreshold = 2, 2
	got := run(c, health.Status{},
		step{1 * time.Second, ok}, step{2 * time.Second, ok}, // starting → healthy at 2
		step{3 * time.Second, fail}, step{4 * time.Second, ok}, step{5 * time.Second, fail}, // never 2 in a row
		step{6 * time.Second, fail},                          // unhealthy
		step{7 * time.Second, ok}, step{8 * time.Second, ok}) // healthy again at 2
	want := []health.State{health.Starting, health.Healthy, health.Healthy, health.Healthy, health.Healthy,
		health.Unhealthy, health.Unhealthy, health.Healthy}
	for i, w := range want {
		if got[i].Status != w {
			t.Fatalf("step %d: %s, want %s (%+v)", i+1, got[i].Status, w, got[i])
		}
	}
	if got[5].ConsecutiveFailures != 2 || got[6].ConsecutiveFailures != 0 || got[6].ConsecutiveSuccesses != 1 {
		t.Fatalf("counters: %+v %+v", got[5], got[6])
	}
	if got[7].LastError != fail.Err || !got[7].LastFailureAt.Equal(boot.Add(6*time.Second)) {
		t.Fatalf("history lost: %+v", got[7])
	}
	// No start period: the first failure counts; threshold 1 flips at once.
	c.FailureThreshold = 1
	if s := health.Apply(c, health.Status{}, fail, boot.Add(time.Second), boot); s.Status != health.Unhealthy {
		t.Fatalf("threshold 1, no start period: %+v", s)
	}
}

func TestApplyNewBootStartsOver(t *testing.T) {
	c := httpCheck()
	old := health.Status{Status: health.Unhealthy, ConsecutiveFailures: 7, LastCheckAt: boot.Add(-time.Minute),
		LastFailureAt: boot.Add(-time.Minute), LastSuccessAt: boot.Add(-time.Hour), LastError: "old"}
	s := health.Apply(c, old, fail, boot.Add(5*time.Second), boot)
	if s.Status != health.Starting || s.ConsecutiveFailures != 0 || s.LastError != fail.Err {
		t.Fatalf("a new boot inherited the old verdict: %+v", s)
	}
	// The previous boot's success does not end this boot's start period.
	if s2 := health.Apply(c, s, fail, boot.Add(10*time.Second), boot); s2.ConsecutiveFailures != 0 {
		t.Fatalf("old success ended the start period: %+v", s2)
	}
}

func TestStatusLifecycleHelpers(t *testing.T) {
	c := httpCheck()
	if health.Initial(health.Check{}).Status != health.Disabled || health.Initial(c).Status != health.Unknown {
		t.Fatal("Initial")
	}
	same := health.Status{Status: health.Healthy, ConsecutiveSuccesses: 4, LastCheckAt: boot.Add(time.Minute)}
	if got := health.Started(same, boot); got != same {
		t.Fatalf("Started reset a status of the same boot (daemon restart): %+v", got)
	}
	older := same
	older.LastCheckAt = boot.Add(-time.Second)
	if got := health.Started(older, boot); got != (health.Status{Status: health.Starting}) {
		t.Fatalf("Started kept an earlier boot's status: %+v", got)
	}
	stopped := health.Stopped(health.Status{Status: health.Unhealthy, ConsecutiveFailures: 3, LastError: "x", LastCheckAt: boot})
	if stopped.Status != health.Unknown || stopped.ConsecutiveFailures != 0 || stopped.LastError != "x" || !stopped.LastCheckAt.Equal(boot) {
		t.Fatalf("Stopped: %+v", stopped)
	}
	// Paused then resumed within the same boot: starts over, but an
	// earlier success of this boot still ends the start period.
	paused := health.Stopped(health.Status{Status: health.Healthy, ConsecutiveSuccesses: 2, LastCheckAt: boot.Add(5 * time.Second), LastSuccessAt: boot.Add(5 * time.Second)})
	resumed := health.Apply(c, health.Started(paused, boot), fail, boot.Add(10*time.Second), boot)
	if resumed.Status != health.Starting || resumed.ConsecutiveFailures != 1 {
		t.Fatalf("resumed: %+v", resumed)
	}

	other := c
	other.Path = "/other"
	cur := health.Status{Status: health.Healthy, ConsecutiveSuccesses: 3}
	for _, tc := range []struct {
		old, new health.Check
		running  bool
		want     health.State
	}{
		{c, health.Check{}, true, health.Disabled},
		{c, c, true, health.Healthy},
		{c, other, true, health.Starting},
		{c, other, false, health.Unknown},
		{health.Check{}, c, false, health.Unknown},
	} {
		if got := health.ForCheckChange(tc.old, tc.new, cur, tc.running); got.Status != tc.want {
			t.Errorf("ForCheckChange(%v→%v, running=%v) = %+v, want %s", tc.old.Path, tc.new.Path, tc.running, got, tc.want)
		}
	}
}

func TestStatusJSON(t *testing.T) {
	s := health.Status{Status: health.Unhealthy, ConsecutiveFailures: 3, LastCheckAt: boot, LastFailureAt: boot, LastError: "timed out after 2s"}
	b, _ := json.Marshal(s)
	const want = `{"status":"unhealthy","consecutive_successes":0,"consecutive_failures":3,"last_check_at":"2025-03-01T12:00:00Z","last_failure_at":"2025-03-01T12:00:00Z","last_error":"timed out after 2s"}`
	if string(b) != want {
		t.Fatalf("marshal %s\nwant    %s", b, want)
	}
	var back health.Status
	if err := json.Unmarshal(b, &back); err != nil || back != s {
		t.Fatalf("round trip %+v %v", back, err)
	}
}
