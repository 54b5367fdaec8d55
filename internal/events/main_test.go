package events_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"hypeman/internal/events"
	"hypeman/internal/instances/state"
)

// TestMain fails the package if any test leaves a goroutine behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errNotFound = errors.New("instance not found")

// source is a fake instance state store (what the manager's Get reads).
type source struct {
	mu    sync.Mutex
	st    state.State
	serr  *string
	gone  bool
	reads atomic.Int64
	// gate, when set, makes the next Get signal entered and block until
	// release is closed (to hold a waiter inside a read).
	gate *gate
}

type gate struct {
	entered, release chan struct{}
	afterRead        bool // block after reading (return the pre-block state)
}

func newSource(st state.State) *source { return &source{st: st} }

func (s *source) Get(ctx context.Context) (state.State, *string, error) {
	s.reads.Add(1)
	s.mu.Lock()
	g := s.gate
	s.gate = nil
	if g != nil && !g.afterRead {
		s.mu.Unlock()
		close(g.entered)
		<-g.release
		s.mu.Lock()
	}
	st, serr, gone := s.st, s.serr, s.gone
	s.mu.Unlock()
	if g != nil && g.afterRead {
		close(g.entered)
		<-g.release
	}
	if gone {
		return "", nil, fmt.Errorf("get %w", errNotFound)
	}
	return st, serr, nil
}

func (s *source) set(st state.State, serr *string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st, s.serr = st, serr
}

// hold makes the next Get block; it returns the gate to watch and open.
// With afterRead, Get returns the state it read before blocking.
func (s *source) hold(afterRead bool) *gate {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gate = &gate{entered: make(chan struct{}), release: make(chan struct{}), afterRead: afterRead}
	return s.gate
}

func (s *source) delete() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gone = true
}

// counters is a Metrics implementation that records what the bus reports.
type counters struct {
	mu        sync.Mutex
	published int
	dropped   map[[2]string]int
}

func (c *counters) EventPublished() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.published++
}

func (c *counters) EventDropped(consumer, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dropped == nil {
		c.dropped = map[[2]string]int{}
	}
	c.dropped[[2]string{consumer, reason}]++
}

func (c *counters) get(consumer, reason string) (published, dropped int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.published, c.dropped[[2]string{consumer, reason}]
}

// logBuf is a goroutine-safe log sink.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// eventually polls cond (for conditions without a channel to wait on).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

func ptr(s string) *string { return &s }

func publish(t testing.TB, b *events.Bus, ev events.Event) events.Event {
	t.Helper()
	ev, err := b.Publish(ev)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	return ev
}
