package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"hypeman/internal/instances/state"
)

// Wait timeout bounds (hypeman's contract) and the polling fallback period.
const (
	DefaultWaitTimeout  = 60 * time.Second
	MaxWaitTimeout      = 5 * time.Minute
	DefaultPollInterval = 5 * time.Second
	waitBuffer          = 4 // waiters see few events; overflow resumes from the history
)

// Errors the API handler maps to 400 responses.
var (
	// ErrInvalidTimeout: unparsable or non-positive timeout (400 invalid_timeout).
	ErrInvalidTimeout = errors.New("invalid timeout")
	// ErrInvalidState: missing, unknown or Unknown target state (400 invalid_state).
	ErrInvalidState = errors.New("invalid state")
	// ErrInstanceDeleted is matched by the error Wait returns when a deleted
	// event arrives (see DeletedError).
	ErrInstanceDeleted = errors.New("instance deleted")
)

// DeletedError is returned when the instance is deleted during the wait. It
// matches ErrInstanceDeleted and, when set, WaitParams.NotFound (so the
// manager's own not-found sentinel, and its 404 mapping, work unchanged).
type DeletedError struct {
	InstanceID string
	NotFound   error
}

func (e *DeletedError) Error() string {
	return fmt.Sprintf("instance %s deleted during wait", e.InstanceID)
}

// Unwrap exposes ErrInstanceDeleted and the caller's not-found error.
func (e *DeletedError) Unwrap() []error {
	if e.NotFound == nil {
		return []error{ErrInstanceDeleted}
	}
	return []error{ErrInstanceDeleted, e.NotFound}
}

// ParseWaitTimeout parses the timeout query parameter: "" means
// DefaultWaitTimeout, values above MaxWaitTimeout are capped, unparsable or
// non-positive values fail with ErrInvalidTimeout.
func ParseWaitTimeout(s string) (time.Duration, error) {
	if s == "" {
		return DefaultWaitTimeout, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%w: %q is not a Go duration (e.g. 30s, 2m)", ErrInvalidTimeout, s)
	}
	if d <= 0 {
		return 0, fmt.Errorf("%w: %q must be positive", ErrInvalidTimeout, s)
	}
	return min(d, MaxWaitTimeout), nil
}

// ParseWaitTargets parses the (possibly repeated) state query parameter: at
// least one, each a defined state other than Unknown; duplicates removed,
// order kept. Failures wrap ErrInvalidState.
func ParseWaitTargets(values []string) ([]state.State, error) {
	if len(values) == 0 {
		return nil, fmt.Errorf("%w: state is required", ErrInvalidState)
	}
	out := make([]state.State, 0, len(values))
	for _, v := range values {
		st, err := state.Parse(v)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidState, err)
		}
		if st == state.Unknown {
			return nil, fmt.Errorf("%w: cannot wait for %s", ErrInvalidState, st)
		}
		if !slices.Contains(out, st) {
			out = append(out, st)
		}
	}
	return out, nil
}

// GetFunc reads the instance's current state and state error. When the
// instance does not exist it returns the caller's not-found error, which
// Wait returns unchanged.
type GetFunc func(ctx context.Context) (st state.State, stateError *string, err error)

// WaitParams are the inputs of Wait. Bus, InstanceID, Targets and Get are
// required.
type WaitParams struct {
	Bus        *Bus
	InstanceID string
	// Targets: return as soon as the instance is in any of them.
	Targets []state.State
	// Timeout: 0 means DefaultWaitTimeout; capped at MaxWaitTimeout;
	// negative fails with ErrInvalidTimeout.
	Timeout time.Duration
	Get     GetFunc
	// RestartPending reports whether the restart policy will restart the
	// instance; while true, terminal states do not end the wait. nil = never.
	RestartPending func() bool
	// NotFound is wrapped into the DeletedError returned on a deleted event.
	NotFound error
	// PollInterval of the fallback re-read (default DefaultPollInterval).
	PollInterval time.Duration
	Clock        Clock
	Logger       *slog.Logger
}

// WaitResult is the outcome of Wait (the body of the wait response).
type WaitResult struct {
	State      state.State `json:"state"`
	StateError *string     `json:"state_error"`
	TimedOut   bool        `json:"timed_out"`
	// Reached is the target that was reached, "" if none.
	Reached state.State `json:"reached,omitempty"`
}

// Wait blocks until the instance is in one of p.Targets, reaches a state
// nothing will leave by itself (TerminalForWait and no restart pending), is
// deleted, the timeout passes or ctx ends.
//
// It subscribes before the first read, so a transition between the read and
// the subscription cannot be missed. Decisions follow events (each state an
// event names is evaluated, so short-lived targets are seen); a re-read every
// PollInterval catches anything the bus failed to deliver and logs a warning
// when it does. On timeout the state is re-read: TimedOut is true only if it
// is still not a target. On ctx end it returns ctx.Err() at once.
func Wait(ctx context.Context, p WaitParams) (WaitResult, error) {
	if p.Bus == nil || p.Get == nil || p.InstanceID == "" {
		return WaitResult{}, errors.New("events.Wait: Bus, Get and InstanceID are required")
	}
	if len(p.Targets) == 0 {
		return WaitResult{}, fmt.Errorf("%w: no target state", ErrInvalidState)
	}
	for _, t := range p.Targets {
		if !t.Valid() || t == state.Unknown {
			return WaitResult{}, fmt.Errorf("%w: cannot wait for %q", ErrInvalidState, t)
		}
	}
	switch {
	case p.Timeout < 0:
		return WaitResult{}, fmt.Errorf("%w: %s must be positive", ErrInvalidTimeout, p.Timeout)
	case p.Timeout == 0:
		p.Timeout = DefaultWaitTimeout
	case p.Timeout > MaxWaitTimeout:
		p.Timeout = MaxWaitTimeout
	}
	if p.PollInterval <= 0 {
		p.PollInterval = DefaultPollInterval
	}
	if p.Clock == nil {
		p.Clock = SystemClock()
	}
	if p.Logger == nil {
		p.Logger = slog.New(slog.DiscardHandler)
	}
	w := &waiter{p: p}
	return w.run(ctx)
}

type waiter struct {
	p    WaitParams
	sub  *Subscription
	last state.State // last state seen, from an event or a read
}

func (w *waiter) subOpts() SubscribeOptions {
	return SubscribeOptions{InstanceID: w.p.InstanceID, Buffer: waitBuffer, Consumer: "wait"}
}

func (w *waiter) run(ctx context.Context) (WaitResult, error) {
	w.sub = w.p.Bus.Subscribe(w.subOpts())
	defer func() { w.sub.Close() }()

	st, serr, err := w.p.Get(ctx)
	if err != nil {
		return WaitResult{}, err
	}
	w.last = st
	if res, done := w.decide(st, serr); done {
		return res, nil
	}

	timeout := w.p.Clock.NewTimer(w.p.Timeout)
	defer timeout.Stop()
	poll := w.p.Clock.NewTimer(w.p.PollInterval)
	defer func() { poll.Stop() }()
	evCh := w.sub.C()

	for {
		select {
		case <-ctx.Done():
			return WaitResult{}, ctx.Err()

		case ev, ok := <-evCh:
			if ok {
				if res, done, err := w.onEvent(ctx, ev); done || err != nil {
					return res, err
				}
				continue
			}
			backlog, complete, live := w.resubscribe()
			if !live {
				evCh = nil // bus closed: the polling fallback carries on
				continue
			}
			evCh = w.sub.C()
			for _, ev := range backlog {
				if res, done, err := w.onEvent(ctx, ev); done || err != nil {
					return res, err
				}
			}
			if !complete { // events lost for good: read the truth now
				if res, done, err := w.reread(ctx, nil); done || err != nil {
					return res, err
				}
			}

		case <-timeout.C():
			st, serr, err := w.p.Get(ctx)
			if err != nil {
				return WaitResult{}, err
			}
			if w.isTarget(st) {
				return WaitResult{State: st, StateError: serr, Reached: st}, nil
			}
			return WaitResult{State: st, StateError: serr, TimedOut: true}, nil

		case <-poll.C():
			if res, done, err := w.reread(ctx, evCh); done || err != nil {
				return res, err
			}
			poll = w.p.Clock.NewTimer(w.p.PollInterval)
		}
	}
}

// reread reads the current state and decides on it. With evCh (the poll
// path), a state the bus has not announced is logged as a warning; events
// already queued are taken first, before and after the read, so a change
// racing the poll is credited to the bus.
func (w *waiter) reread(ctx context.Context, evCh <-chan Event) (WaitResult, bool, error) {
	if evCh != nil {
		if res, done, err := w.drain(ctx, evCh); done || err != nil {
			return res, done, err
		}
	}
	st, serr, err := w.p.Get(ctx)
	if err != nil {
		return WaitResult{}, false, err
	}
	if evCh != nil && st != w.last {
		if res, done, err := w.drain(ctx, evCh); done || err != nil {
			return res, done, err
		}
		if st != w.last {
			w.p.Logger.Warn("wait: polling saw a state change the event bus did not deliver",
				"instance", w.p.InstanceID, "from", w.last, "to", st)
		}
	}
	w.last = st
	res, done := w.decide(st, serr)
	return res, done, nil
}

// resubscribe replaces a subscription that ended. After a lag it resumes
// from the history: backlog holds the missed events, complete is false if
// some are gone for good. live is false when the bus is closed.
func (w *waiter) resubscribe() (backlog []Event, complete, live bool) {
	err := w.sub.Err()
	var lag *LagError
	if !errors.As(err, &lag) {
		if !errors.Is(err, ErrBusClosed) {
			w.p.Logger.Warn("wait: subscription ended", "instance", w.p.InstanceID, "err", err)
		}
		return nil, false, false
	}
	backlog, w.sub, complete = w.p.Bus.SubscribeSince(lag.MissedID-1, w.subOpts())
	if !complete {
		w.p.Logger.Warn("wait: events lost beyond the history; re-reading the state",
			"instance", w.p.InstanceID, "missed_from", lag.MissedID)
	}
	return backlog, complete, true
}

// drain handles events already buffered, without blocking.
func (w *waiter) drain(ctx context.Context, evCh <-chan Event) (WaitResult, bool, error) {
	for {
		select {
		case ev, ok := <-evCh:
			if !ok {
				return WaitResult{}, false, nil // the main loop resubscribes
			}
			if res, done, err := w.onEvent(ctx, ev); done || err != nil {
				return res, done, err
			}
		default:
			return WaitResult{}, false, nil
		}
	}
}

// onEvent decides on the state an event names, so that a target the
// instance passes through only briefly still ends the wait.
func (w *waiter) onEvent(ctx context.Context, ev Event) (WaitResult, bool, error) {
	if ev.InstanceID != w.p.InstanceID {
		return WaitResult{}, false, nil
	}
	if ev.Type == TypeDeleted {
		return WaitResult{}, false, &DeletedError{InstanceID: w.p.InstanceID, NotFound: w.p.NotFound}
	}
	st := ev.To
	w.last = st
	res, done := w.decide(st, nil)
	if !done {
		return WaitResult{}, false, nil
	}
	// Returning: read the state error (exit info) to report it.
	cur, serr, err := w.p.Get(ctx)
	if err != nil {
		return WaitResult{}, false, err
	}
	if cur == st {
		res.StateError = serr
		return res, true, nil
	}
	if res.Reached != "" {
		return res, true, nil // a target passed through briefly still counts
	}
	// Giving up on a state the instance has already left (e.g. Stopped, but
	// a restart made it Initializing): decide on where it is now instead.
	w.last = cur
	res, done = w.decide(cur, serr)
	return res, done, nil
}

func (w *waiter) isTarget(st state.State) bool { return slices.Contains(w.p.Targets, st) }

// decide: a target ends the wait (Reached set); a terminal state ends it
// early unless a restart is pending; anything else keeps waiting.
func (w *waiter) decide(st state.State, serr *string) (WaitResult, bool) {
	if w.isTarget(st) {
		return WaitResult{State: st, StateError: serr, Reached: st}, true
	}
	if !st.TerminalForWait() {
		return WaitResult{}, false
	}
	if w.p.RestartPending != nil && w.p.RestartPending() {
		w.p.Logger.Debug("wait: terminal state but a restart is pending; still waiting",
			"instance", w.p.InstanceID, "state", st)
		return WaitResult{}, false
	}
	return WaitResult{State: st, StateError: serr}, true
}
