package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/testimage"
)

type instance struct {
	ID          string  `json:"id"`
	Name        string  `json:"name"`
	State       string  `json:"state"`
	ExitCode    *int    `json:"exit_code"`
	ExitMessage *string `json:"exit_message"`
	StoppedAt   *string `json:"stopped_at"`
}

type event struct {
	InstanceID string `json:"instance_id"`
	From       string `json:"from"`
	To         string `json:"to"`
	Type       string `json:"type"`
}

// pushImage pushes a busybox image built with opts to the daemon's built-in
// registry (as `hypeman push` does) and waits until it is ready.
func pushImage(t *testing.T, s *e2e.Server, repoTag string, opts testimage.Options) {
	t.Helper()
	s.PushImage(repoTag, testimage.Busybox(t, opts))
}

// The issue-3 acceptance path, through HTTP only, with a kill -9 of the daemon
// while the VM runs.
func TestHTTPLifecycleAndDaemonKill(t *testing.T) {
	t.Parallel()
	s := e2e.Start(t)
	pushImage(t, s, "apps/ticker:v1", testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"trap 'echo bye; exit 0' TERM; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done"},
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	evs := s.SSE(ctx, "/events")

	var in instance
	st, body := s.JSON("POST", "/instances", map[string]any{"name": "ticker", "image": "apps/ticker:v1", "size": "256MB", "vcpus": 1}, &in)
	if st != http.StatusCreated {
		t.Fatalf("create: %d %s", st, body)
	}
	var w struct {
		State    string `json:"state"`
		TimedOut bool   `json:"timed_out"`
	}
	if st, body := s.JSON("GET", "/instances/ticker/wait?state=Running&timeout=90s", nil, &w); st != 200 || w.State != "Running" {
		t.Fatalf("wait Running: %d %s", st, body)
	}
	// The events stream saw Initializing then Running, in that order.
	var seen []string
	timeout := time.After(10 * time.Second)
	for len(seen) == 0 || seen[len(seen)-1] != "Running" {
		select {
		case data := <-evs:
			var ev event
			if json.Unmarshal([]byte(data), &ev) == nil && ev.InstanceID == in.ID {
				seen = append(seen, ev.To)
			}
		case <-timeout:
			t.Fatalf("events: %v", seen)
		}
	}
	if strings.Join(seen, ",") != "Stopped,Initializing,Running" {
		t.Errorf("event order %v, want Stopped(created),Initializing,Running", seen)
	}

	// Logs: tail, then follow until a new tick arrives. Wait until the
	// program printed at least three ticks (slow under a loaded TCG host).
	for deadline := time.Now().Add(30 * time.Second); tickCount(s, in.ID) < 3; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the ticker never printed three ticks")
		}
	}
	lines := collect(s.LogLines(ctx, "/instances/"+in.ID+"/logs?tail=3"), 5*time.Second)
	if len(lines) != 3 || !strings.HasPrefix(lines[2], "tick ") {
		t.Fatalf("tail=3 gave %q", lines)
	}
	fctx, fcancel := context.WithTimeout(ctx, 20*time.Second)
	follow := s.LogLines(fctx, "/instances/ticker/logs?tail=1&follow=true")
	first := <-follow
	var next string
	for next = range follow {
		if strings.HasPrefix(next, "tick ") && next != first {
			break
		}
	}
	fcancel()
	if !strings.HasPrefix(next, "tick ") || next == first {
		t.Fatalf("follow did not deliver a new line (first %q, next %q)", first, next)
	}

	// kill -9 the daemon while the VM runs; a new daemon re-adopts it.
	s.Kill()
	s.Restart()
	if st, body := s.JSON("GET", "/instances/"+in.ID, nil, &in); st != 200 || in.State != "Running" {
		t.Fatalf("after daemon kill: %d %s", st, body)
	}
	before := lastTick(t, s, in.ID)
	for deadline := time.Now().Add(15 * time.Second); tickCount(s, in.ID) <= before; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("program stopped ticking across the daemon restart (still at %d)", before)
		}
	}

	// Stop: graceful, exit info recorded.
	if st, body := s.JSON("POST", "/instances/"+in.ID+"/stop", nil, &in); st != 200 || in.State != "Stopped" {
		t.Fatalf("stop: %d %s", st, body)
	}
	if in.ExitCode == nil || *in.ExitCode != 0 || in.StoppedAt == nil {
		t.Fatalf("exit info after stop: %+v", in)
	}
	if st, body := s.Do("POST", "/instances/"+in.ID+"/stop", nil); st != 409 || !strings.Contains(string(body), "start") {
		t.Fatalf("stop when stopped: %d %s", st, body)
	}
	// Start again, then delete.
	if st, body := s.JSON("POST", "/instances/"+in.ID+"/start", nil, &in); st != 200 {
		t.Fatalf("start: %d %s", st, body)
	}
	if st, body := s.JSON("GET", "/instances/"+in.ID+"/wait?state=Running&timeout=90s", nil, &w); st != 200 || w.State != "Running" {
		t.Fatalf("wait Running after start: %d %s", st, body)
	}
	if st, body := s.Do("DELETE", "/instances/"+in.ID, nil); st != http.StatusNoContent {
		t.Fatalf("delete: %d %s", st, body)
	}
	if st, _ := s.Do("GET", "/instances/"+in.ID, nil); st != 404 {
		t.Fatalf("get after delete: %d", st)
	}
}

func collect(ch <-chan string, d time.Duration) []string {
	var out []string
	timeout := time.After(d)
	for {
		select {
		case l, ok := <-ch:
			if !ok {
				return out
			}
			out = append(out, l)
		case <-timeout:
			return out
		}
	}
}

func lastTick(t *testing.T, s *e2e.Server, id string) int {
	t.Helper()
	n := tickCount(s, id)
	if n < 0 {
		t.Fatalf("no tick in the last log line of %s", id)
	}
	return n
}

// tickCount is the last tick number in the app log (-1 when none yet).
func tickCount(s *e2e.Server, id string) int {
	lines := collect(s.LogLines(context.Background(), "/instances/"+id+"/logs?tail=1"), 5*time.Second)
	n := -1
	if len(lines) == 1 {
		fmt.Sscanf(lines[0], "tick %d", &n)
	}
	return n
}
