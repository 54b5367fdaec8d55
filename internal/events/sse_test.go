package events_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/events/eventstest"
	"hypeman/internal/instances/state"
)

func TestWriteSSE(t *testing.T) {
	rec := httptest.NewRecorder()
	ev := events.StateChange("a", state.Running, state.Stopped, "guest exited")
	ev.ID, ev.At = 42, time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := events.WriteSSE(rec, ev); err != nil {
		t.Fatal(err)
	}
	want := "id: 42\nevent: state_change\ndata: " +
		`{"id":42,"type":"state_change","instance_id":"a","from":"Running","to":"Stopped","at":"2025-01-01T00:00:00Z","reason":"guest exited"}` +
		"\n\n"
	if rec.Body.String() != want || !rec.Flushed {
		t.Fatalf("got %q (flushed %v)\nwant %q", rec.Body.String(), rec.Flushed, want)
	}
}

func TestLastEventID(t *testing.T) {
	r := httptest.NewRequest("GET", "/events?last_event_id=9", nil)
	if id, ok := events.LastEventID(r); !ok || id != 9 {
		t.Fatalf("query: %d %v", id, ok)
	}
	r.Header.Set("Last-Event-ID", " 12 ")
	if id, ok := events.LastEventID(r); !ok || id != 12 {
		t.Fatalf("header wins: %d %v", id, ok)
	}
	r.Header.Set("Last-Event-ID", "abc")
	if _, ok := events.LastEventID(r); ok {
		t.Fatal("garbage accepted")
	}
	if _, ok := events.LastEventID(httptest.NewRequest("GET", "/events", nil)); ok {
		t.Fatal("absent accepted")
	}
}

type sseMsg struct {
	id, event, data, comment string
}

func (m sseMsg) decode(t *testing.T) events.Event {
	t.Helper()
	var ev events.Event
	if err := json.Unmarshal([]byte(m.data), &ev); err != nil {
		t.Fatalf("data %q: %v", m.data, err)
	}
	if strconv.FormatUint(ev.ID, 10) != m.id || string(ev.Type) != m.event {
		t.Fatalf("id/event fields %q/%q disagree with data %+v", m.id, m.event, ev)
	}
	return ev
}

// sseClient connects to an httptest server running Stream and parses messages.
type sseClient struct {
	t      *testing.T
	resp   *http.Response
	cancel context.CancelFunc
	msgs   chan sseMsg
	done   chan struct{}
}

func dial(t *testing.T, url string, lastID string) *sseClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	c := &sseClient{t: t, resp: resp, cancel: cancel, msgs: make(chan sseMsg, 100), done: make(chan struct{})}
	go c.read()
	t.Cleanup(c.close)
	return c
}

func (c *sseClient) read() {
	defer close(c.done)
	br := bufio.NewReader(c.resp.Body)
	var m sseMsg
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			close(c.msgs)
			return
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			c.msgs <- m
			m = sseMsg{}
		case strings.HasPrefix(line, ":"):
			m.comment = strings.TrimSpace(line[1:])
		case strings.HasPrefix(line, "id: "):
			m.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			m.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			m.data = line[6:]
		}
	}
}

func (c *sseClient) next() sseMsg {
	c.t.Helper()
	select {
	case m, ok := <-c.msgs:
		if !ok {
			c.t.Fatal("stream ended")
		}
		return m
	case <-time.After(10 * time.Second):
		c.t.Fatal("no SSE message")
	}
	return sseMsg{}
}

func (c *sseClient) close() {
	c.cancel()
	c.resp.Body.Close()
	<-c.done
}

type sseServer struct {
	*httptest.Server
	bus  *events.Bus
	clk  *eventstest.Clock
	errs chan error
}

func newSSEServer(t *testing.T, opts events.Options) *sseServer {
	s := &sseServer{clk: eventstest.NewClock(time.Unix(1_700_000_000, 0)), errs: make(chan error, 10)}
	opts.Clock = s.clk
	s.bus = events.New(opts)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := events.LastEventID(r)
		s.errs <- events.Stream(r.Context(), w, s.bus, events.StreamOptions{
			InstanceID: r.URL.Query().Get("instance"), Resume: ok, LastEventID: id, Clock: s.clk,
		})
	}))
	t.Cleanup(func() { s.Close(); s.bus.Close() })
	return s
}

func TestStreamLiveFilteredWithHeartbeat(t *testing.T) {
	s := newSSEServer(t, events.Options{})
	c := dial(t, s.URL+"?instance=a", "")
	if ct := c.resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	eventually(t, "stream subscribed", func() bool { return s.bus.Subscribers("a") == 1 })
	a1 := publish(t, s.bus, events.StateChange("a", state.Created, state.Initializing, "start"))
	publish(t, s.bus, events.StateChange("b", state.Created, state.Initializing, "start"))
	a2 := publish(t, s.bus, events.StateChange("a", state.Initializing, state.Running, "boot"))
	for _, want := range []events.Event{a1, a2} {
		got := c.next().decode(t)
		if got.ID != want.ID || got.To != want.To || got.InstanceID != "a" || !got.At.Equal(want.At) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
	}
	// Heartbeat every 15s of (fake) time.
	if err := s.clk.WaitTimers(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	s.clk.Advance(events.DefaultHeartbeat - time.Second)
	if s.clk.Timers() != 1 {
		t.Fatal("heartbeat fired early")
	}
	s.clk.Advance(time.Second)
	if m := c.next(); m.comment != "heartbeat" || m.id != "" {
		t.Fatalf("want heartbeat comment, got %+v", m)
	}
	// Client goes away: Stream returns nil and unsubscribes.
	c.close()
	select {
	case err := <-s.errs:
		if err != nil {
			t.Fatalf("Stream returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Stream did not return after the client left")
	}
	if n := s.bus.Subscribers("a"); n != 0 {
		t.Fatalf("%d subscriptions left", n)
	}
}

func TestStreamResumesFromLastEventID(t *testing.T) {
	s := newSSEServer(t, events.Options{})
	var ids []uint64
	for i := range 5 {
		ids = append(ids, publish(t, s.bus, events.StateChange(fmt.Sprint("i", i%2), state.Running, state.Paused, "")).ID)
	}
	c := dial(t, s.URL, fmt.Sprint(ids[1]))
	for _, want := range ids[2:] {
		if got := c.next().decode(t); got.ID != want {
			t.Fatalf("replayed %d, want %d", got.ID, want)
		}
	}
	eventually(t, "stream subscribed", func() bool { return s.bus.Subscribers("") == 1 })
	live := publish(t, s.bus, events.StateChange("i0", state.Paused, state.Running, ""))
	if got := c.next().decode(t); got.ID != live.ID {
		t.Fatalf("live %d, want %d", got.ID, live.ID)
	}
}

func TestStreamResumeBeyondHistorySaysEventsLost(t *testing.T) {
	s := newSSEServer(t, events.Options{History: 2})
	var ids []uint64
	for range 5 {
		ids = append(ids, publish(t, s.bus, events.StateChange("a", state.Running, state.Paused, "")).ID)
	}
	c := dial(t, s.URL+"?instance=a", fmt.Sprint(ids[0]))
	m := c.next()
	var lost struct {
		Reason      string `json:"reason"`
		LastEventID uint64 `json:"last_event_id"`
	}
	if m.event != events.EventsLost || m.id != "" || json.Unmarshal([]byte(m.data), &lost) != nil ||
		lost.Reason != events.LostHistoryExhausted || lost.LastEventID != ids[0] {
		t.Fatalf("want events_lost first, got %+v", m)
	}
	for _, want := range ids[3:] {
		if got := c.next().decode(t); got.ID != want {
			t.Fatalf("got %d, want %d", got.ID, want)
		}
	}
}

// blockingWriter is a ResponseWriter whose writes block while held, to
// simulate a client that stops reading.
type blockingWriter struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	hdr     http.Header
	held    chan struct{} // closed = writes flow
	entered chan struct{} // closed on the first blocked write
	once    sync.Once
}

func (w *blockingWriter) Header() http.Header { return w.hdr }
func (w *blockingWriter) WriteHeader(int)     {}
func (w *blockingWriter) Flush()              {}
func (w *blockingWriter) Write(p []byte) (int, error) {
	select {
	case <-w.held:
	default:
		w.once.Do(func() { close(w.entered) })
		<-w.held
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func TestStreamSlowClientResumesFromHistory(t *testing.T) {
	m := &counters{}
	bus := events.New(events.Options{Metrics: m})
	defer bus.Close()
	w := &blockingWriter{hdr: http.Header{}, held: make(chan struct{}), entered: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- events.Stream(ctx, w, bus, events.StreamOptions{Buffer: 4, Consumer: "sse-test"})
	}()
	eventually(t, "stream subscribed", func() bool { return bus.Subscribers("") == 1 })
	var want []string
	for i := range 30 {
		ev := publish(t, bus, events.StateChange("a", state.Running, state.Paused, fmt.Sprint(i)))
		want = append(want, fmt.Sprint(ev.ID))
		if i == 0 {
			<-w.entered // the stream is stuck writing the first event
		}
	}
	if _, drop := m.get("sse-test", events.DropBufferFull); drop != 1 {
		t.Fatalf("dropped = %d, want 1", drop)
	}
	close(w.held)
	eventually(t, "all events written", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return strings.Count(w.buf.String(), "\nevent: state_change\n") == 30
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Stream: %v", err)
	}
	out := w.buf.String()
	var got []string
	for _, line := range strings.Split(out, "\n") {
		if id, ok := strings.CutPrefix(line, "id: "); ok {
			got = append(got, id)
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") || strings.Contains(out, events.EventsLost) {
		t.Fatalf("stream after lag:\n got %v\nwant %v\n%s", got, want, out)
	}
}

func TestStreamEndsWhenBusCloses(t *testing.T) {
	s := newSSEServer(t, events.Options{})
	c := dial(t, s.URL, "")
	eventually(t, "stream subscribed", func() bool { return s.bus.Subscribers("") == 1 })
	s.bus.Close()
	select {
	case err := <-s.errs:
		if !errors.Is(err, events.ErrBusClosed) {
			t.Fatalf("Stream returned %v, want ErrBusClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Stream did not end")
	}
	if _, err := io.ReadAll(c.resp.Body); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("body: %v", err)
	}
}

// The server-wide WriteTimeout (set on hypemand for ordinary requests) must
// not cut a long-lived stream.
func TestStreamOutlivesServerWriteTimeout(t *testing.T) {
	bus := events.New(events.Options{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = events.Stream(r.Context(), w, bus, events.StreamOptions{})
	}))
	srv.Config.WriteTimeout = 100 * time.Millisecond
	srv.Start()
	t.Cleanup(func() { srv.Close(); bus.Close() }) // after the client's cleanup
	c := dial(t, srv.URL, "")
	eventually(t, "stream subscribed", func() bool { return bus.Subscribers("") == 1 })
	time.Sleep(300 * time.Millisecond)
	ev := publish(t, bus, events.StateChange("a", state.Running, state.Stopped, ""))
	if got := c.next().decode(t); got.ID != ev.ID {
		t.Fatalf("got %d, want %d", got.ID, ev.ID)
	}
}
