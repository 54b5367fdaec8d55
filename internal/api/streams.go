package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"hypeman/internal/api/gen"
	"hypeman/internal/events"
	"hypeman/internal/instances"
)

// sse writes server-sent events, flushing after each one. It is safe for
// concurrent use (the log follower and the keepalive ticker share it).
type sse struct {
	mu  sync.Mutex
	w   http.ResponseWriter
	rc  *http.ResponseController
	err error // first write error: the client is gone
}

// startSSE sends the stream's headers.
func startSSE(w http.ResponseWriter) *sse {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // tell reverse proxies not to buffer
	w.WriteHeader(http.StatusOK)
	s := &sse{w: w, rc: http.NewResponseController(w)}
	s.mu.Lock()
	s.flushLocked()
	s.mu.Unlock()
	return s
}

func (s *sse) flushLocked() {
	if s.err == nil {
		if err := s.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			s.err = err
		}
	}
}

func (s *sse) write(b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if _, err := s.w.Write(b); err != nil {
		s.err = err
		return err
	}
	s.flushLocked()
	return s.err
}

// jsonString sends one event whose data is text as a JSON string (the log
// framing of hypeman's API: its SDK JSON-decodes every event's data). The
// encoding escapes line breaks, so one line is always one data field.
// Invalid UTF-8 becomes U+FFFD.
func (s *sse) jsonString(text string) error {
	var b bytes.Buffer
	b.WriteString("data: ")
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(text); err != nil { // ends with "\n"
		return err
	}
	b.WriteByte('\n')
	return s.write(b.Bytes())
}

// event sends a typed event with an optional id and JSON data.
func (s *sse) event(id, typ string, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var b strings.Builder
	if id != "" {
		b.WriteString("id: " + id + "\n")
	}
	b.WriteString("event: " + typ + "\n")
	b.WriteString("data: ")
	b.Write(body)
	b.WriteString("\n\n")
	return s.write([]byte(b.String()))
}

func (s *sse) comment(text string) error { return s.write([]byte(": " + text + "\n\n")) }

// bareComment sends a comment line without the blank line that would
// follow it in an event: hypeman's SDK dispatches an event at every blank
// line, even one without data, and fails to JSON-decode that empty event.
// A comment line alone is ignored by every parser.
func (s *sse) bareComment(text string) error { return s.write([]byte(": " + text + "\n")) }

// --- logs ---

// logStream is the 200 response of GET /instances/{id}/logs.
type logStream struct {
	s         *server
	ctx       context.Context
	ref       string
	opts      instances.LogOptions
	keepalive time.Duration
}

func (s *server) GetInstanceLogs(ctx context.Context, req gen.GetInstanceLogsRequestObject) (gen.GetInstanceLogsResponseObject, error) {
	opts := instances.LogOptions{Tail: 100, Follow: deref(req.Params.Follow)}
	if req.Params.Tail != nil {
		opts.Tail = *req.Params.Tail
	}
	if opts.Tail < 0 || opts.Tail > instances.MaxTail {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "invalid query parameter \"tail\": must be between 0 and %d", instances.MaxTail)
	}
	src, err := instances.ParseLogSource(string(deref(req.Params.Source)))
	if err != nil {
		return nil, err
	}
	opts.Source = src
	// Resolve first so a bad reference is a 404/409, not an empty stream.
	in, err := s.opts.Instances.Get(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	return logStream{s: s, ctx: ctx, ref: in.ID, opts: opts, keepalive: s.opts.Keepalive}, nil
}

func (l logStream) VisitGetInstanceLogsResponse(w http.ResponseWriter) error {
	out := startSSE(w)
	ctx, cancel := context.WithCancel(l.ctx)
	defer cancel()
	var wg sync.WaitGroup
	if l.opts.Follow {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keepalive(ctx, out, l.keepalive, cancel)
		}()
	}
	err := l.s.opts.Instances.StreamLogs(ctx, l.ref, l.opts, out.jsonString)
	cancel()
	wg.Wait()
	if err != nil && out.err == nil && l.ctx.Err() == nil {
		status, code, msg := l.s.classify(err)
		if status >= 500 {
			l.s.log.Error("log stream failed", "instance", l.ref, "err", err)
		}
		_ = out.event("", "error", gen.Error{Code: code, Message: msg})
	}
	return nil
}

// keepalive sends a bare comment every interval until ctx ends; a failed
// write (client gone) cancels the stream.
func keepalive(ctx context.Context, out *sse, interval time.Duration, cancel context.CancelFunc) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := out.bareComment("keepalive"); err != nil {
				cancel()
				return
			}
		}
	}
}

// --- wait ---

func (s *server) WaitForInstanceState(ctx context.Context, req gen.WaitForInstanceStateRequestObject) (gen.WaitForInstanceStateResponseObject, error) {
	targets, err := events.ParseWaitTargets(req.Params.State)
	if err != nil {
		return nil, err
	}
	timeout, err := events.ParseWaitTimeout(deref(req.Params.Timeout))
	if err != nil {
		return nil, err
	}
	if s.opts.Waiter == nil {
		return nil, newError(http.StatusNotImplemented, CodeNotImplemented, "waiting for a state is not available on this server yet")
	}
	res, err := s.opts.Waiter.WaitForState(ctx, req.Id, targets, timeout)
	if err != nil {
		return nil, err
	}
	out := gen.WaitForInstanceState200JSONResponse{
		State: gen.InstanceState(res.State), StateError: res.StateError, TimedOut: res.TimedOut,
	}
	if res.Reached != "" {
		r := gen.InstanceState(res.Reached)
		out.Reached = &r
	}
	return out, nil
}

// --- lifecycle events ---

// eventStream is the 200 response of GET /events and
// GET /instances/{id}/events.
type eventStream struct {
	s          *server
	ctx        context.Context
	instanceID string // "" = all
	lastID     uint64
	resume     bool
}

func parseLastEventID(p *string) (uint64, bool, error) {
	if p == nil || strings.TrimSpace(*p) == "" {
		return 0, false, nil
	}
	id, err := strconv.ParseUint(strings.TrimSpace(*p), 10, 64)
	if err != nil {
		return 0, false, newError(http.StatusBadRequest, CodeInvalidRequest, "invalid header \"Last-Event-ID\": %q is not an event id", *p)
	}
	return id, true, nil
}

func (s *server) StreamEvents(ctx context.Context, req gen.StreamEventsRequestObject) (gen.StreamEventsResponseObject, error) {
	last, resume, err := parseLastEventID(req.Params.LastEventID)
	if err != nil {
		return nil, err
	}
	if s.opts.Events == nil {
		return nil, newError(http.StatusNotImplemented, CodeNotImplemented, "lifecycle events are not available on this server yet")
	}
	return eventStream{s: s, ctx: ctx, lastID: last, resume: resume}, nil
}

func (s *server) StreamInstanceEvents(ctx context.Context, req gen.StreamInstanceEventsRequestObject) (gen.StreamInstanceEventsResponseObject, error) {
	last, resume, err := parseLastEventID(req.Params.LastEventID)
	if err != nil {
		return nil, err
	}
	if s.opts.Events == nil {
		return nil, newError(http.StatusNotImplemented, CodeNotImplemented, "lifecycle events are not available on this server yet")
	}
	in, err := s.opts.Instances.Get(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	return eventStream{s: s, ctx: ctx, instanceID: in.ID, lastID: last, resume: resume}, nil
}

func (e eventStream) VisitStreamEventsResponse(w http.ResponseWriter) error { return e.serve(w) }
func (e eventStream) VisitStreamInstanceEventsResponse(w http.ResponseWriter) error {
	return e.serve(w)
}

// resetEvent tells the client it missed events and should re-read state.
type resetEvent struct {
	Reason string `json:"reason"` // history_lost | lagged
}

func (e eventStream) serve(w http.ResponseWriter) error {
	opts := events.SubscribeOptions{InstanceID: e.instanceID, Consumer: "sse"}
	var (
		backlog []events.Event
		sub     *events.Subscription
		ok      = true
	)
	if e.resume {
		backlog, sub, ok = e.s.opts.Events.SubscribeSince(e.lastID, opts)
	} else {
		sub = e.s.opts.Events.Subscribe(opts)
	}
	defer sub.Close()
	out := startSSE(w)
	if !ok {
		if out.event("", "reset", resetEvent{Reason: "history_lost"}) != nil {
			return nil
		}
	}
	send := func(ev events.Event) (done bool) {
		if out.event(strconv.FormatUint(ev.ID, 10), string(ev.Type), ev) != nil {
			return true
		}
		return e.instanceID != "" && ev.Type == events.TypeDeleted
	}
	for _, ev := range backlog {
		if send(ev) {
			return nil
		}
	}
	t := time.NewTicker(e.s.opts.Keepalive)
	defer t.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return nil
		case <-t.C:
			if out.comment("keepalive") != nil {
				return nil
			}
		case ev, open := <-sub.C():
			if !open {
				if errors.Is(sub.Err(), events.ErrLagged) {
					_ = out.event("", "reset", resetEvent{Reason: "lagged"})
				}
				return nil
			}
			if send(ev) {
				return nil
			}
		}
	}
}
