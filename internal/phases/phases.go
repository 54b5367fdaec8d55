// Package phases accounts for how long each instance spends in each
// lifecycle phase (running, standby, stopped, ...): the
// `phase_durations_ms`, `current_phase` and `current_phase_since` of
// hypeman's Instance, which billing-like consumers sum.
//
// Why it is shaped this way:
//   - It is a consumer of the lifecycle event bus, like the restart and
//     health controllers: the instance manager publishes every transition
//     it observes and does not know this package exists. That keeps the
//     manager about lifecycle, not bookkeeping.
//   - Ledgers are persisted (one versioned JSON file, written atomically and
//     debounced) so totals survive daemon restarts.
//   - Events can be missed (the daemon was down while a VM exited, or the
//     subscriber lagged past the bus history). A read therefore passes the
//     instance's derived state and the best-known time it entered it; a
//     ledger that disagrees is corrected then, so the answer is never a
//     phase the instance is not in.
package phases

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"strings"
	"sync"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/fsutil"
	"hypeman/internal/instances/state"
)

// fileVersion is the persisted format version of the ledger file.
const fileVersion = 1

// flushInterval bounds how long a transition may sit only in memory.
const flushInterval = 2 * time.Second

// Phase is an instance state lowercased ("running", "standby", ...).
func Phase(st state.State) string { return strings.ToLower(string(st)) }

// View is what the API reports for one instance.
type View struct {
	// DurationsMs has the cumulative milliseconds per phase, including the
	// current phase up to now.
	DurationsMs map[string]int64
	Current     string
	Since       time.Time
}

// ledger is one instance's account.
type ledger struct {
	Current  string           `json:"current"`
	Since    time.Time        `json:"since"`
	TotalsMs map[string]int64 `json:"totals_ms,omitempty"` // closed periods only
}

// enter closes the current period at `at` and opens phase p. Out-of-order
// times (clock steps) never produce negative durations.
func (l *ledger) enter(p string, at time.Time) {
	if l.Current == p {
		return
	}
	if l.Current != "" {
		if d := at.Sub(l.Since); d > 0 {
			if l.TotalsMs == nil {
				l.TotalsMs = map[string]int64{}
			}
			l.TotalsMs[l.Current] += d.Milliseconds()
		}
	}
	if at.Before(l.Since) {
		at = l.Since
	}
	l.Current, l.Since = p, at
}

type fileFormat struct {
	Version   int                `json:"version"`
	Instances map[string]*ledger `json:"instances"`
}

// Tracker keeps the ledgers. It is safe for concurrent use.
type Tracker struct {
	path string
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex
	ledgers map[string]*ledger
	dirty   bool
}

// Open loads the ledger file at path (a missing file is an empty ledger
// set). now is the clock (nil: time.Now).
func Open(path string, now func() time.Time, log *slog.Logger) (*Tracker, error) {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Tracker{path: path, log: log, now: now, ledgers: map[string]*ledger{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return t, nil
	case err != nil:
		return nil, fmt.Errorf("phases: %w", err)
	}
	var f fileFormat
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("phases: %s: %w", path, err)
	}
	if f.Version != fileVersion {
		return nil, fmt.Errorf("phases: %s has format version %d; this hypemand reads version %d", path, f.Version, fileVersion)
	}
	for id, l := range f.Instances {
		if l != nil {
			t.ledgers[id] = l
		}
	}
	return t, nil
}

// Observe applies one lifecycle event.
func (t *Tracker) Observe(ev events.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ev.Type == events.TypeDeleted || ev.To == "" {
		if _, ok := t.ledgers[ev.InstanceID]; ok {
			delete(t.ledgers, ev.InstanceID)
			t.dirty = true
		}
		return
	}
	l := t.ledgers[ev.InstanceID]
	if l == nil {
		l = &ledger{}
		t.ledgers[ev.InstanceID] = l
	}
	l.enter(Phase(ev.To), ev.At)
	t.dirty = true
}

// View reports id's phases given its derived state st and the best-known
// time it entered st (zero when unknown). A ledger that missed the
// transition into st is corrected here.
func (t *Tracker) View(id string, st state.State, entered time.Time) View {
	now := t.now()
	cur := Phase(st)
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.ledgers[id]
	if l == nil {
		at := entered
		if at.IsZero() || at.After(now) {
			at = now
		}
		l = &ledger{Current: cur, Since: at}
		t.ledgers[id] = l
		t.dirty = true
	} else if l.Current != cur {
		at := entered
		if at.IsZero() || at.After(now) {
			at = now
		}
		l.enter(cur, at)
		t.dirty = true
	}
	out := View{DurationsMs: maps.Clone(l.TotalsMs), Current: l.Current, Since: l.Since}
	if out.DurationsMs == nil {
		out.DurationsMs = map[string]int64{}
	}
	if d := now.Sub(l.Since); d > 0 {
		out.DurationsMs[l.Current] += d.Milliseconds()
	} else if _, ok := out.DurationsMs[l.Current]; !ok {
		out.DurationsMs[l.Current] = 0
	}
	return out
}

// Flush writes the ledgers if they changed.
func (t *Tracker) Flush() error {
	t.mu.Lock()
	if !t.dirty {
		t.mu.Unlock()
		return nil
	}
	f := fileFormat{Version: fileVersion, Instances: make(map[string]*ledger, len(t.ledgers))}
	for id, l := range t.ledgers {
		c := *l
		c.TotalsMs = maps.Clone(l.TotalsMs)
		f.Instances[id] = &c
	}
	t.dirty = false
	t.mu.Unlock()
	b, err := json.Marshal(f)
	if err == nil {
		err = fsutil.WriteFileAtomic(t.path, b, 0o644)
	}
	if err != nil {
		t.mu.Lock()
		t.dirty = true
		t.mu.Unlock()
		return fmt.Errorf("phases: save %s: %w", t.path, err)
	}
	return nil
}

// Subscriber is the part of the event bus the tracker needs.
type Subscriber interface {
	Subscribe(opts events.SubscribeOptions) *events.Subscription
	SubscribeSince(lastID uint64, opts events.SubscribeOptions) ([]events.Event, *events.Subscription, bool)
}

// Subscribe starts following bus and returns the loop to run (Run). It
// subscribes at once, so events published between Subscribe and Run are
// not lost: call it before the instance manager starts publishing.
func (t *Tracker) Subscribe(bus Subscriber) *Follower {
	return &Follower{t: t, bus: bus, sub: bus.Subscribe(subscribeOptions)}
}

var subscribeOptions = events.SubscribeOptions{Buffer: 256, Consumer: "phases"}

// Follower feeds bus events to a Tracker.
type Follower struct {
	t   *Tracker
	bus Subscriber
	sub *events.Subscription
}

// Run applies events until ctx ends, flushing the ledgers every
// flushInterval and once more on the way out. A lagging subscription is
// resumed from the bus history; what is older than the history is
// corrected by View.
func (f *Follower) Run(ctx context.Context) error {
	tick := time.NewTicker(flushInterval)
	defer tick.Stop()
	defer func() {
		f.sub.Close()
		if err := f.t.Flush(); err != nil {
			f.t.log.Warn("phases: final flush", "err", err)
		}
	}()
	var last uint64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if err := f.t.Flush(); err != nil {
				f.t.log.Warn("phases: flush", "err", err)
			}
		case ev, ok := <-f.sub.C():
			if ok {
				f.t.Observe(ev)
				last = ev.ID
				continue
			}
			err := f.sub.Err()
			var lag *events.LagError
			if !errors.As(err, &lag) {
				return nil // bus closed
			}
			replay, sub, _ := f.bus.SubscribeSince(last, subscribeOptions)
			for _, ev := range replay {
				f.t.Observe(ev)
				last = ev.ID
			}
			f.sub = sub
		}
	}
}
