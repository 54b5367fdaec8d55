package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
)

// sseEvent is one parsed server-sent event (comments collected apart).
type sseEvent struct {
	id, event string
	data      []string
}

// readSSE parses events from resp until n events were read, the stream
// ends, or stop returns true.
func readSSE(t *testing.T, resp *http.Response, n int) (evs []sseEvent, comments int) {
	t.Helper()
	sc := bufio.NewScanner(resp.Body)
	var cur sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.data != nil || cur.event != "" {
				evs = append(evs, cur)
				if len(evs) == n {
					return evs, comments
				}
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, ":"):
			comments++
		case strings.HasPrefix(line, "data: "):
			cur.data = append(cur.data, strings.TrimPrefix(line, "data: "))
		case strings.HasPrefix(line, "id: "):
			cur.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			cur.event = strings.TrimPrefix(line, "event: ")
		default:
			t.Fatalf("unexpected SSE line %q", line)
		}
	}
	return evs, comments
}

// sdkDecode reads a log stream the way hypeman's Go SDK does: every blank
// line dispatches an event (with or without data) and its data, the data
// lines joined with newlines, is JSON-decoded as a string. It returns the
// lines until the stream ends, n lines were read, or decoding fails.
func sdkDecode(t *testing.T, body io.Reader, n int) ([]string, error) {
	t.Helper()
	sc := bufio.NewScanner(body)
	sc.Buffer(nil, bufio.MaxScanTokenSize<<9)
	var lines []string
	var data bytes.Buffer
	for sc.Scan() {
		txt := sc.Bytes()
		if len(txt) == 0 {
			var line string
			if err := json.Unmarshal(data.Bytes(), &line); err != nil {
				return lines, fmt.Errorf("event %d (%q): %w", len(lines), data.String(), err)
			}
			lines = append(lines, line)
			if len(lines) == n {
				return lines, nil
			}
			data.Reset()
			continue
		}
		name, value, _ := bytes.Cut(txt, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		if string(name) == "data" {
			data.Write(value)
			data.WriteByte('\n')
		}
	}
	return lines, sc.Err()
}

func TestLogsSSE(t *testing.T) {
	e := newTestEnv(t, nil)
	e.inst.add(&instances.Instance{ID: "abc", Name: "web", State: state.Running})
	e.inst.logLines = []string{"one", "two", "quote\" and <html> & back\\slash", "multi\rline\nhere", "", "\xffbad utf-8"}
	tok := mint(t)

	resp := e.do("GET", "/instances/web/logs?tail=5&source=vmm", tok, "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("logs: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// Each line is one event whose data is the line as a JSON string, HTML
	// left unescaped.
	want := "data: \"two\"\n\n" + `data: "quote\" and <html> & back\\slash"` + "\n\n" +
		`data: "multi\rline\nhere"` + "\n\n" + "data: \"\"\n\n" + `data: "\ufffdbad utf-8"` + "\n\n"
	if string(raw) != want {
		t.Fatalf("stream\n%q\nwant\n%q", raw, want)
	}
	lines, err := sdkDecode(t, bytes.NewReader(raw), -1)
	if err != nil || len(lines) != 5 || lines[1] != "quote\" and <html> & back\\slash" || lines[2] != "multi\rline\nhere" || lines[3] != "" {
		t.Fatalf("as the SDK reads it: %q %v", lines, err)
	}
	if o := e.inst.logOpts[0]; o.Tail != 5 || o.Source != instances.LogVMM || o.Follow {
		t.Fatalf("log options %+v", o)
	}
	// Defaults: tail 100, app, no follow.
	resp = e.do("GET", "/instances/abc/logs", tok, "")
	readSSE(t, resp, -1)
	resp.Body.Close()
	if o := e.inst.logOpts[1]; o.Tail != 100 || o.Source != instances.LogApp || o.Follow {
		t.Fatalf("default log options %+v", o)
	}

	// Follow: lines and keepalives (a bare comment line: a comment
	// followed by a blank line would be an empty event, which the SDK
	// fails to decode), and the manager's stream ends when the client
	// goes away.
	e.inst.logLines = []string{"four"}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+"/instances/web/logs?follow=true&tail=1", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err = e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var seen bytes.Buffer
	sc := bufio.NewScanner(io.TeeReader(resp.Body, &seen))
	keepalives := 0
	for sc.Scan() && keepalives < 3 {
		if sc.Text() == ": keepalive" {
			keepalives++
		}
	}
	if keepalives < 3 || !strings.HasPrefix(seen.String(), "data: \"four\"\n\n: keepalive\n: keepalive\n") {
		t.Fatalf("follow stream %q", seen.String())
	}
	if lines, err := sdkDecode(t, &seen, -1); err != nil || len(lines) != 1 || lines[0] != "four" {
		t.Fatalf("follow as the SDK reads it: %q %v", lines, err)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-e.inst.logDone:
	case <-time.After(5 * time.Second):
		t.Fatal("StreamLogs did not end after the client disconnected")
	}

	// An error after the headers is reported as an error event.
	e.inst.errOn["StreamLogs"] = fmt.Errorf("%w: gone", instances.ErrNotFound)
	resp = e.do("GET", "/instances/web/logs?tail=0", tok, "")
	evs, _ := readSSE(t, resp, -1)
	resp.Body.Close()
	if len(evs) != 1 || evs[0].event != "error" || !strings.Contains(evs[0].data[0], `"code":"not_found"`) {
		t.Fatalf("error event %+v", evs)
	}
}

func TestWait(t *testing.T) {
	e := newTestEnv(t, nil)
	tok := mint(t)
	resp := e.do("GET", "/instances/web/wait?state=Running", tok, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 501 || code != "not_implemented" {
		t.Fatalf("wait without waiter: %d %s", resp.StatusCode, code)
	}

	w := &fakeWaiter{answer: func(ctx context.Context) (events.WaitResult, error) {
		return events.WaitResult{State: state.Stopped, TimedOut: false, Reached: state.Stopped}, nil
	}}
	e = newTestEnv(t, func(o *Options) { o.Waiter = w })
	resp = e.do("GET", "/instances/web/wait?state=Running&state=Stopped&timeout=1h", tok, "")
	var body map[string]any
	jsonBody(t, resp, &body)
	if resp.StatusCode != 200 || body["state"] != "Stopped" || body["timed_out"] != false || body["reached"] != "Stopped" || body["state_error"] != nil {
		t.Fatalf("wait: %d %v", resp.StatusCode, body)
	}

	if len(w.targets) != 2 || w.targets[0] != state.Running || w.targets[1] != state.Stopped || w.timeout != events.MaxWaitTimeout {
		t.Fatalf("waiter got %v %v", w.targets, w.timeout)
	}
	e.do("GET", "/instances/web/wait?state=Running", tok, "").Body.Close()
	if w.timeout != events.DefaultWaitTimeout {
		t.Fatalf("default timeout %v", w.timeout)
	}
	w.answer = func(ctx context.Context) (events.WaitResult, error) {
		return events.WaitResult{}, &events.DeletedError{InstanceID: "x", NotFound: instances.ErrNotFound}
	}
	resp = e.do("GET", "/instances/web/wait?state=Running", tok, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 404 || code != "not_found" {
		t.Fatalf("deleted during wait: %d %s", resp.StatusCode, code)
	}
}

// TestLongRequestsOutliveWriteTimeout: a server WriteTimeout must not cut a
// wait (or a log follow) short.
func TestLongRequestsOutliveWriteTimeout(t *testing.T) {
	w := &fakeWaiter{answer: func(ctx context.Context) (events.WaitResult, error) {
		select {
		case <-time.After(600 * time.Millisecond):
		case <-ctx.Done():
			return events.WaitResult{}, ctx.Err()
		}
		return events.WaitResult{State: state.Running, Reached: state.Running}, nil
	}}
	e := newTestEnv(t, func(o *Options) { o.Waiter = w })
	srv := httptest.NewUnstartedServer(e.api)
	srv.Config.WriteTimeout = 200 * time.Millisecond
	srv.Start()
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/instances/web/wait?state=Running", nil)
	req.Header.Set("Authorization", "Bearer "+mint(t))
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("wait cut by the write timeout: %v", err)
	}
	var body map[string]any
	jsonBody(t, resp, &body)
	if body["state"] != "Running" {
		t.Fatalf("wait: %v", body)
	}
	// A log follow keeps streaming past the write timeout too.
	e.inst.add(&instances.Instance{ID: "abc", Name: "web", State: state.Running})
	e.inst.logLines = []string{"x"}
	req, _ = http.NewRequest("GET", srv.URL+"/instances/web/logs?follow=true", nil)
	req.Header.Set("Authorization", "Bearer "+mint(t))
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	resp, err = srv.Client().Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	evs, comments := readSSE(t, resp, -1) // runs until ctx ends the body
	resp.Body.Close()
	if len(evs) != 1 || comments < 5 {
		t.Fatalf("follow under WriteTimeout got %d events, %d keepalives in 700ms", len(evs), comments)
	}
	// Control: an ordinary slow request is still cut (the timeout is live).
	e.inst.stopDelay = 400 * time.Millisecond
	req, _ = http.NewRequest("POST", srv.URL+"/instances/web/stop", nil)
	req.Header.Set("Authorization", "Bearer "+mint(t))
	if resp, err := srv.Client().Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("slow ordinary request was not cut by the write timeout: %d", resp.StatusCode)
	}
}

func TestEventsSSE(t *testing.T) {
	tok := mint(t)
	e := newTestEnv(t, nil)
	resp := e.do("GET", "/events", tok, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 501 {
		t.Fatalf("events without bus: %d %s", resp.StatusCode, code)
	}
	bus := events.New(events.Options{FirstID: 100})
	defer bus.Close()
	e = newTestEnv(t, func(o *Options) { o.Events = bus })
	e.inst.add(&instances.Instance{ID: "abc", Name: "web", State: state.Running})

	// History before the subscription: resume with Last-Event-ID.
	bus.Publish(events.StateChange("abc", state.Stopped, state.Initializing, "start"))   // 100
	bus.Publish(events.StateChange("other", state.Stopped, state.Initializing, "start")) // 101
	bus.Publish(events.StateChange("abc", state.Initializing, state.Running, "boot"))    // 102

	req, _ := http.NewRequest("GET", e.srv.URL+"/instances/web/events", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Last-Event-ID", "100")
	resp, err := e.srv.Client().Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("instance events: %v %v", resp.StatusCode, err)
	}
	done := make(chan []sseEvent)
	go func() {
		evs, _ := readSSE(t, resp, -1)
		done <- evs
	}()
	// Live events after the backlog; the stream ends after "deleted".
	waitSubscribers(t, bus, "abc", 1)
	bus.Publish(events.StateChange("abc", state.Running, state.Stopped, "stop"))
	bus.Publish(events.Deleted("abc", state.Stopped, "deleted"))
	var evs []sseEvent
	select {
	case evs = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("instance event stream did not end after deleted")
	}
	resp.Body.Close()
	if len(evs) != 3 || evs[0].id != "102" || evs[0].event != "state_change" || !strings.Contains(evs[0].data[0], `"to":"Running"`) ||
		evs[1].id != "103" || evs[2].event != "deleted" {
		t.Fatalf("events %+v", evs)
	}
	if waitSubscribers(t, bus, "abc", 0); bus.Subscribers("abc") != 0 {
		t.Fatal("subscription leaked")
	}

	// Global stream with a resume point older than the history: reset first.
	small := events.New(events.Options{FirstID: 1, History: 2})
	defer small.Close()
	e = newTestEnv(t, func(o *Options) { o.Events = small })
	for i := 0; i < 5; i++ {
		small.Publish(events.StateChange("x", state.Stopped, state.Running, "r"))
	}
	req, _ = http.NewRequest("GET", e.srv.URL+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Last-Event-ID", "1")
	resp, err = e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	evs, _ = readSSE(t, resp, 3)
	resp.Body.Close()
	if len(evs) != 3 || evs[0].event != "reset" || !strings.Contains(evs[0].data[0], "history_lost") || evs[1].id != "4" {
		t.Fatalf("resume past history: %+v", evs)
	}
	resp = e.do("GET", "/events", tok, "")
	resp.Body.Close()
	req, _ = http.NewRequest("GET", e.srv.URL+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Last-Event-ID", "abc")
	resp, _ = e.srv.Client().Do(req)
	if code, _ := errBody(t, resp); resp.StatusCode != 400 || code != "invalid_request" {
		t.Fatalf("bad Last-Event-ID: %d %s", resp.StatusCode, code)
	}
}

func waitSubscribers(t *testing.T, bus *events.Bus, id string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for bus.Subscribers(id) != n {
		if time.Now().After(deadline) {
			t.Fatalf("subscribers of %q: %d, want %d", id, bus.Subscribers(id), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
