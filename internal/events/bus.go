package events

import (
	"errors"
	"fmt"
	"sync"
)

// Defaults for Options and SubscribeOptions.
const (
	DefaultHistory = 1024
	DefaultBuffer  = 64
)

// Errors a Subscription can end with (see Subscription.Err) and Publish
// returns after Close.
var (
	// ErrClosed: the consumer closed the subscription itself.
	ErrClosed = errors.New("subscription closed")
	// ErrBusClosed: the bus was closed (daemon shutdown).
	ErrBusClosed = errors.New("event bus closed")
	// ErrLagged is matched (errors.Is) by every *LagError.
	ErrLagged = errors.New("subscriber lagged: events dropped")
)

// LagError ends a subscription whose buffer was full when an event arrived.
// Every event with an ID below MissedID was delivered on the channel; the
// event MissedID and all later ones were not. Resume with
// SubscribeSince(MissedID-1, ...).
type LagError struct {
	Consumer string
	MissedID uint64
}

func (e *LagError) Error() string {
	return fmt.Sprintf("events consumer %q lagged: dropped from event %d on", e.Consumer, e.MissedID)
}

// Is makes errors.Is(err, ErrLagged) true.
func (e *LagError) Is(target error) bool { return target == ErrLagged }

// Options configures a Bus. The zero value is usable.
type Options struct {
	// History is the number of events kept for Since/SubscribeSince
	// (default DefaultHistory; negative means none).
	History int
	// Metrics receives counters (default: discarded).
	Metrics Metrics
	// Clock stamps events whose At is zero and seeds IDs (default system).
	Clock Clock
	// FirstID is the ID of the first event. Zero means "current Unix time in
	// microseconds", which keeps IDs increasing across daemon restarts.
	FirstID uint64
}

// Bus is the lifecycle event bus. All methods are safe for concurrent use.
type Bus struct {
	metrics Metrics
	clock   Clock

	mu       sync.Mutex
	closed   bool
	nextID   uint64
	ring     []Event // history ring, len == capacity once full
	ringHead int     // index of the oldest event when the ring is full
	ringCap  int
	global   map[*Subscription]struct{}
	byInst   map[string]map[*Subscription]struct{}
}

// New returns a bus.
func New(opts Options) *Bus {
	b := &Bus{
		metrics: opts.Metrics,
		clock:   opts.Clock,
		global:  make(map[*Subscription]struct{}),
		byInst:  make(map[string]map[*Subscription]struct{}),
	}
	if b.metrics == nil {
		b.metrics = nopMetrics{}
	}
	if b.clock == nil {
		b.clock = SystemClock()
	}
	switch {
	case opts.History == 0:
		b.ringCap = DefaultHistory
	case opts.History > 0:
		b.ringCap = opts.History
	}
	b.ring = make([]Event, 0, b.ringCap)
	b.nextID = opts.FirstID
	if b.nextID == 0 {
		b.nextID = uint64(b.clock.Now().UnixMicro())
		if b.nextID == 0 {
			b.nextID = 1
		}
	}
	return b
}

// Publish assigns ev its ID (and At, if zero), records it in the history and
// offers it to every subscriber of ev.InstanceID and every global
// subscriber. It never blocks on a subscriber. It returns the stamped event,
// or ErrBusClosed after Close.
func (b *Bus) Publish(ev Event) (Event, error) {
	if ev.Type == "" {
		ev.Type = TypeStateChange
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ev, ErrBusClosed
	}
	if ev.At.IsZero() {
		ev.At = b.clock.Now()
	}
	ev.ID = b.nextID
	b.nextID++
	b.record(ev)
	b.metrics.EventPublished()
	for s := range b.byInst[ev.InstanceID] {
		b.offer(s, ev)
	}
	for s := range b.global {
		b.offer(s, ev)
	}
	return ev, nil
}

// offer sends ev to s without blocking; on a full buffer s is cut off.
// Called with b.mu held.
func (b *Bus) offer(s *Subscription, ev Event) {
	select {
	case s.ch <- ev:
	default:
		b.metrics.EventDropped(s.consumer, DropBufferFull)
		b.end(s, &LagError{Consumer: s.consumer, MissedID: ev.ID})
	}
}

func (b *Bus) record(ev Event) {
	if b.ringCap == 0 {
		return
	}
	if len(b.ring) < b.ringCap {
		b.ring = append(b.ring, ev)
		return
	}
	b.ring[b.ringHead] = ev
	b.ringHead = (b.ringHead + 1) % b.ringCap
}

// Since returns the retained events with ID > lastID, oldest first, limited
// to instanceID unless it is "". ok is false when events after lastID are no
// longer retained (or lastID is not an ID this bus issued, e.g. from a
// previous daemon): the slice is then only the retained suffix.
func (b *Bus) Since(lastID uint64, instanceID string) (evs []Event, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.since(lastID, instanceID)
}

func (b *Bus) since(lastID uint64, instanceID string) ([]Event, bool) {
	oldest := b.nextID - uint64(len(b.ring)) // ID of the oldest retained event
	ok := lastID+1 >= oldest && lastID < b.nextID
	var out []Event
	n := len(b.ring)
	for i := 0; i < n; i++ {
		ev := b.ring[(b.ringHead+i)%n]
		if ev.ID <= lastID && ok {
			continue
		}
		if instanceID != "" && ev.InstanceID != instanceID {
			continue
		}
		out = append(out, ev)
	}
	return out, ok
}

// LastID returns the ID of the most recently published event (FirstID-1 if
// none yet).
func (b *Bus) LastID() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.nextID - 1
}

// SubscribeOptions selects and sizes a subscription.
type SubscribeOptions struct {
	// InstanceID limits the subscription to one instance; "" means all.
	InstanceID string
	// Buffer is the channel capacity (default DefaultBuffer).
	Buffer int
	// Consumer names the subscriber in metrics ("wait", "sse", "restart"…).
	Consumer string
}

// Subscribe registers a subscription. After Close it returns a subscription
// that is already ended with ErrBusClosed.
func (b *Bus) Subscribe(opts SubscribeOptions) *Subscription {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.subscribe(opts)
}

// SubscribeSince atomically takes Since(lastID, opts.InstanceID) and
// subscribes, so the backlog plus the channel form a gap-free, duplicate-free
// sequence (when ok is true).
func (b *Bus) SubscribeSince(lastID uint64, opts SubscribeOptions) (backlog []Event, sub *Subscription, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	backlog, ok = b.since(lastID, opts.InstanceID)
	return backlog, b.subscribe(opts), ok
}

func (b *Bus) subscribe(opts SubscribeOptions) *Subscription {
	if opts.Buffer <= 0 {
		opts.Buffer = DefaultBuffer
	}
	if opts.Consumer == "" {
		opts.Consumer = "unnamed"
	}
	s := &Subscription{
		bus:        b,
		ch:         make(chan Event, opts.Buffer),
		instanceID: opts.InstanceID,
		consumer:   opts.Consumer,
	}
	if b.closed {
		s.err = ErrBusClosed
		close(s.ch)
		return s
	}
	if s.instanceID == "" {
		b.global[s] = struct{}{}
	} else {
		m := b.byInst[s.instanceID]
		if m == nil {
			m = make(map[*Subscription]struct{})
			b.byInst[s.instanceID] = m
		}
		m[s] = struct{}{}
	}
	return s
}

// end removes s and closes its channel with err. Called with b.mu held.
func (b *Bus) end(s *Subscription, err error) {
	if s.err != nil {
		return
	}
	s.err = err
	close(s.ch)
	if s.instanceID == "" {
		delete(b.global, s)
		return
	}
	if m := b.byInst[s.instanceID]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(b.byInst, s.instanceID)
		}
	}
}

// Subscribers returns the number of live subscriptions for instanceID (""
// counts global ones).
func (b *Bus) Subscribers(instanceID string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if instanceID == "" {
		return len(b.global)
	}
	return len(b.byInst[instanceID])
}

// Close ends every subscription with ErrBusClosed; later Publish calls fail.
// It is idempotent.
func (b *Bus) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.closed = true
	for s := range b.global {
		b.end(s, ErrBusClosed)
	}
	for _, m := range b.byInst {
		for s := range m {
			b.end(s, ErrBusClosed)
		}
	}
}

// Subscription receives events from a Bus.
type Subscription struct {
	bus        *Bus
	ch         chan Event
	instanceID string
	consumer   string
	err        error // guarded by bus.mu; non-nil once ended
}

// C delivers events in ID order. It is closed when the subscription ends;
// buffered events remain readable, then Err says why it ended.
func (s *Subscription) C() <-chan Event { return s.ch }

// Err is nil while the subscription is live; afterwards ErrClosed,
// ErrBusClosed or a *LagError (errors.Is(err, ErrLagged)).
func (s *Subscription) Err() error {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	return s.err
}

// Close ends the subscription (ErrClosed). Idempotent; safe concurrently with
// Publish and Bus.Close.
func (s *Subscription) Close() {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	s.bus.end(s, ErrClosed)
}
