package main_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/testimage"
)

// Issue 4 with a real VM: wait for Running, the program exits by itself and
// wait?state=Stopped returns Stopped with the exit info; /events shows the
// transitions in order; a wait that times out says so.
func TestWaitForExitAndEvents(t *testing.T) {
	t.Parallel()
	s := e2e.Start(t)
	pushImage(t, s, "apps/short:v1", testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo working; sleep 3; exit 4"},
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	evs := s.SSE(ctx, "/events")
	var in instance
	if st, body := s.JSON("POST", "/instances", map[string]any{"name": "short", "image": "apps/short:v1", "size": "256MB", "vcpus": 1}, &in); st != http.StatusCreated {
		t.Fatalf("create: %d %s", st, body)
	}
	var w struct {
		State      string  `json:"state"`
		StateError *string `json:"state_error"`
		TimedOut   bool    `json:"timed_out"`
		Reached    string  `json:"reached"`
	}
	if st, body := s.JSON("GET", "/instances/short/wait?state=Running&timeout=90s", nil, &w); st != 200 || w.State != "Running" || w.TimedOut {
		t.Fatalf("wait Running: %d %s", st, body)
	}
	// A short wait for a state that will not come in time times out.
	if st, body := s.JSON("GET", "/instances/short/wait?state=Standby&timeout=1s", nil, &w); st != 200 || !w.TimedOut || w.State != "Running" {
		t.Fatalf("wait timeout: %d %s", st, body)
	}
	// Any-of: Stopped (or Standby); the program exits by itself.
	if st, body := s.JSON("GET", "/instances/short/wait?state=Stopped&state=Standby&timeout=60s", nil, &w); st != 200 || w.State != "Stopped" || w.Reached != "Stopped" || w.TimedOut {
		t.Fatalf("wait Stopped: %d %s", st, body)
	}
	if st, body := s.JSON("GET", "/instances/short", nil, &in); st != 200 || in.ExitCode == nil || *in.ExitCode != 4 || in.ExitMessage == nil {
		t.Fatalf("exit info: %d %s", st, body)
	}
	var seen []string
	timeout := time.After(10 * time.Second)
	for len(seen) < 4 || !strings.HasSuffix(seen[len(seen)-1], ">Stopped") {
		select {
		case data := <-evs:
			var ev event
			if json.Unmarshal([]byte(data), &ev) == nil && ev.InstanceID == in.ID {
				seen = append(seen, ev.From+">"+ev.To)
			}
		case <-timeout:
			t.Fatalf("events: %v", seen)
		}
	}
	if got := strings.Join(seen, " "); got != ">Stopped Stopped>Initializing Initializing>Running Running>Stopped" {
		t.Fatalf("events %q", got)
	}
	// Bad input: unknown state, bad timeout.
	if st, body := s.Do("GET", "/instances/short/wait?state=Unknown", nil); st != 400 || !strings.Contains(string(body), "invalid_state") {
		t.Fatalf("state=Unknown: %d %s", st, body)
	}
	if st, body := s.Do("GET", "/instances/short/wait?state=Running&timeout=-1s", nil); st != 400 || !strings.Contains(string(body), "invalid_timeout") {
		t.Fatalf("timeout=-1s: %d %s", st, body)
	}
}
