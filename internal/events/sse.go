package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// SSE stream defaults.
const (
	DefaultHeartbeat    = 15 * time.Second
	DefaultWriteTimeout = 30 * time.Second
	// EventsLost is the SSE event type sent when the client missed events
	// that cannot be replayed; its data is {"reason":..., "last_event_id":...}.
	// Clients should re-read instance state when they see it.
	EventsLost = "events_lost"
	// Reasons carried by an events_lost event.
	LostHistoryExhausted = "history_exhausted" // Last-Event-ID older than the history
	LostSlowConsumer     = "slow_consumer"     // the stream fell behind the bus and the history
)

// WriteSSE writes ev as one text/event-stream message:
//
//	id: <ID>
//	event: <Type>
//	data: <JSON of ev>
//
// and flushes w when it is an http.Flusher.
func WriteSSE(w io.Writer, ev Event) error {
	if err := encodeSSE(w, ev); err != nil {
		return err
	}
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	return nil
}

// LastEventID returns the resume point of an SSE request: the Last-Event-ID
// header (sent by EventSource on reconnect), else the last_event_id query
// parameter (handy for curl). ok is false when absent or not a number.
func LastEventID(r *http.Request) (id uint64, ok bool) {
	v := strings.TrimSpace(r.Header.Get("Last-Event-ID"))
	if v == "" {
		v = r.URL.Query().Get("last_event_id")
	}
	if v == "" {
		return 0, false
	}
	id, err := strconv.ParseUint(v, 10, 64)
	return id, err == nil
}

// StreamOptions configures Stream.
type StreamOptions struct {
	// InstanceID limits the stream to one instance; "" streams all.
	InstanceID string
	// Resume replays the history after LastEventID before live events.
	Resume      bool
	LastEventID uint64
	// Heartbeat is the period of ": heartbeat" comment lines that keep
	// proxies and clients from timing out an idle stream (default 15s).
	Heartbeat time.Duration
	// WriteTimeout bounds each write to a client that stopped reading
	// (default 30s). The server-wide write timeout is lifted for the stream.
	WriteTimeout time.Duration
	// Buffer and Consumer are passed to the subscription (Consumer default "sse").
	Buffer   int
	Consumer string
	// Clock drives the heartbeat (default system clock).
	Clock  Clock
	Logger *slog.Logger
}

// Stream serves an SSE stream of lifecycle events on w until ctx ends
// (normally the request context: client gone), a write fails, or the bus
// closes. It writes the response headers itself. With opts.Resume the
// retained history after opts.LastEventID comes first; if that history is
// incomplete an events_lost message precedes it. If the client falls behind
// the bus, the stream resumes from the history without a gap when it can,
// and sends events_lost when it cannot. It returns nil when ctx ends.
func Stream(ctx context.Context, w http.ResponseWriter, bus *Bus, opts StreamOptions) error {
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = DefaultHeartbeat
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.Consumer == "" {
		opts.Consumer = "sse"
	}
	if opts.Clock == nil {
		opts.Clock = SystemClock()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &sseStream{w: w, rc: http.NewResponseController(w), opts: opts}

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	s.extendDeadline()
	w.WriteHeader(http.StatusOK)

	subOpts := SubscribeOptions{InstanceID: opts.InstanceID, Buffer: opts.Buffer, Consumer: opts.Consumer}
	var sub *Subscription
	if opts.Resume {
		backlog, sb, complete := bus.SubscribeSince(opts.LastEventID, subOpts)
		sub = sb
		if !complete {
			if err := s.lost(LostHistoryExhausted, opts.LastEventID); err != nil {
				sub.Close()
				return err
			}
		}
		for _, ev := range backlog {
			if err := s.event(ev); err != nil {
				sub.Close()
				return err
			}
		}
	} else {
		sub = bus.Subscribe(subOpts)
	}
	defer func() { sub.Close() }()
	if err := s.flush(); err != nil {
		return err
	}

	hb := opts.Clock.NewTimer(opts.Heartbeat)
	defer func() { hb.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-sub.C():
			if ok {
				if err := s.event(ev); err != nil {
					return err
				}
				if err := s.flush(); err != nil {
					return err
				}
				continue
			}
			var lag *LagError
			if err := sub.Err(); !errors.As(err, &lag) {
				return err // ErrBusClosed
			}
			opts.Logger.Warn("events stream fell behind; resuming from history",
				"consumer", opts.Consumer, "missed_from", lag.MissedID)
			backlog, sb, complete := bus.SubscribeSince(lag.MissedID-1, subOpts)
			sub = sb
			if !complete {
				if err := s.lost(LostSlowConsumer, lag.MissedID-1); err != nil {
					return err
				}
			}
			for _, ev := range backlog {
				if err := s.event(ev); err != nil {
					return err
				}
			}
			if err := s.flush(); err != nil {
				return err
			}
		case <-hb.C():
			s.extendDeadline()
			if _, err := io.WriteString(w, ": heartbeat\n\n"); err != nil {
				return fmt.Errorf("write heartbeat: %w", err)
			}
			if err := s.flush(); err != nil {
				return err
			}
			hb = opts.Clock.NewTimer(opts.Heartbeat)
		}
	}
}

type sseStream struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	opts StreamOptions
}

// extendDeadline replaces the server's write timeout by a per-write one. It
// is a network deadline, so it uses the real clock, never opts.Clock.
// Writers that do not support deadlines (httptest.ResponseRecorder) are fine.
func (s *sseStream) extendDeadline() {
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.opts.WriteTimeout))
}

func (s *sseStream) event(ev Event) error {
	s.extendDeadline()
	return encodeSSE(s.w, ev)
}

// encodeSSE writes one message. The JSON has no newlines, so one data line.
func encodeSSE(w io.Writer, ev Event) error {
	data, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode event %d: %w", ev.ID, err)
	}
	if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", ev.ID, ev.Type, data); err != nil {
		return fmt.Errorf("write event %d: %w", ev.ID, err)
	}
	return nil
}

func (s *sseStream) lost(reason string, lastID uint64) error {
	s.extendDeadline()
	data, _ := json.Marshal(struct {
		Reason      string `json:"reason"`
		LastEventID uint64 `json:"last_event_id"`
	}{reason, lastID})
	if _, err := fmt.Fprintf(s.w, "event: %s\ndata: %s\n\n", EventsLost, data); err != nil {
		return fmt.Errorf("write %s: %w", EventsLost, err)
	}
	return nil
}

func (s *sseStream) flush() error {
	if err := s.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return fmt.Errorf("flush events stream: %w", err)
	}
	return nil
}
