// Package pending is the hand-off between a controller's public methods
// (Refresh and friends, called from HTTP handlers on any goroutine) and the
// controller's own loop: a mutex-guarded set of instance IDs waiting to be
// re-read, plus a wake-up channel the loop selects on.
//
// Why: every lifecycle controller needs the same thing, and getting it right
// matters. Callers must never block on the loop (it may be busy or not yet
// running), repeated requests for one ID must collapse into one re-read, and
// no request may be lost between the loop draining the set and the next
// wake-up. The channel has capacity 1 and sends never block: one buffered
// signal means "the set may be non-empty", and since an ID is added before
// the signal is sent, a loop that drains the set after every receive always
// sees it.
//
// Set carries bare IDs; Map carries a value per ID for controllers whose
// requests say more than "look again" (restart's health-check failures).
package pending

import "sync"

// Map is a set of pending instance IDs, each with a value of type V, and a
// wake-up channel. Create it with NewMap; all methods are safe for
// concurrent use.
type Map[V any] struct {
	mu   sync.Mutex
	m    map[string]V
	kick chan struct{}
}

// NewMap returns an empty Map.
func NewMap[V any]() *Map[V] {
	return &Map[V]{m: map[string]V{}, kick: make(chan struct{}, 1)}
}

// Update sets id's value to f(current), where current is the zero V if id is
// not pending, then wakes the loop. It never blocks on the loop. f runs with
// the Map locked and must not call back into it.
func (p *Map[V]) Update(id string, f func(V) V) {
	p.mu.Lock()
	p.m[id] = f(p.m[id])
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default: // a wake-up is already queued; it will see id
	}
}

// Take removes and returns every pending ID with its value (an empty map
// when none is pending).
func (p *Map[V]) Take() map[string]V {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.m
	p.m = map[string]V{}
	return m
}

// C receives after Update; the loop should then call Take. A receive may
// find nothing pending (an earlier Take already got it).
func (p *Map[V]) C() <-chan struct{} { return p.kick }

// Set is a set of pending instance IDs and a wake-up channel. Create it with
// NewSet; all methods are safe for concurrent use.
type Set struct{ m *Map[struct{}] }

// NewSet returns an empty Set.
func NewSet() *Set { return &Set{m: NewMap[struct{}]()} }

// Add marks id pending and wakes the loop. It never blocks on the loop.
func (s *Set) Add(id string) {
	s.m.Update(id, func(struct{}) struct{} { return struct{}{} })
}

// Take removes and returns every pending ID, each once, in no particular
// order.
func (s *Set) Take() []string {
	m := s.m.Take()
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	return ids
}

// C receives after Add; the loop should then call Take. A receive may find
// nothing pending (an earlier Take already got it).
func (s *Set) C() <-chan struct{} { return s.m.C() }
