package ingress

// Wake on request: a request whose target is asleep (Standby, or Stopped
// when its rule sets WakeStopped) is held while the instance is brought
// back, then proxied.
//
// Why it is shaped this way:
//
//   - The proxy knows nothing about instance states: it resolves first (the
//     hot path stays one lookup) and only when the resolver fails asks the
//     Waker, a small interface the daemon implements over the instance
//     manager. The Waker decides whether the target is asleep (ErrNotAsleep
//     otherwise: the request gets the 502 it got before wake existed) and
//     brings it to Running; admission refusals come back as ErrWakeRefused.
//   - One wake per target at a time (single flight): every request that
//     finds the same instance asleep joins the flight in progress, so a
//     burst of requests causes one restore. The flight runs detached from
//     the requests (a client that gives up does not abort a restore others
//     wait for) under the manager's lifetime, bounded by 2×WakeTimeout.
//   - Each request waits at most Config.WakeTimeout, then gets 504
//     wake_timeout; the wake continues and later requests find the
//     instance Running (or join the flight still under way).
//   - Paused instances are not woken: a pause is an operator's deliberate
//     freeze and the VMM is alive, so the resolver answers and the request
//     is proxied as before (the guest's network queue holds the connection
//     until it is resumed or the dial timeout passes → 502).
//   - Only HTTP: this ingress publishes no raw TCP ports (see the package
//     comment), so there is no accepted TCP connection to hold.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// DefaultWakeTimeout bounds how long a request is held while its target
// wakes when Config.WakeTimeout is 0.
const DefaultWakeTimeout = 30 * time.Second

// WakeTimeoutSetting is the daemon setting behind Config.WakeTimeout (named
// in the 504 a held request gets).
const WakeTimeoutSetting = "ingress_wake_timeout"

// Waker brings an asleep instance back to Running.
//
// Wake returns when the instance is Running (WakeInfo.From names the state
// it was woken from, "" when it was already awake), or with an error:
// wrapping ErrNotAsleep when there is nothing it may wake (not found,
// Stopped without opts.Stopped, Template, ...), wrapping ErrWakeRefused
// when the host refused the resources, anything else when the wake failed.
type Waker interface {
	Wake(ctx context.Context, instance string, opts WakeOptions) (WakeInfo, error)
}

// WakeOptions are a rule's wake settings.
type WakeOptions struct {
	// Stopped allows starting a Stopped instance (Rule.WakeStopped).
	Stopped bool
}

// WakeInfo describes a finished wake.
type WakeInfo struct {
	// From is the state the instance was woken from ("Standby",
	// "Stopped"), "" when it needed no wake.
	From string
	// Booted is set when the program was started afresh (not resumed):
	// its server may not listen yet, so held requests wait until the
	// target port accepts a connection.
	Booted bool
}

// Wake results, as reported to WakeMetrics.
const (
	WakeOK      = "ok"      // the instance is Running
	WakeRefused = "refused" // admission refused the resources
	WakeFailed  = "failed"  // the restore or start failed
	WakeTimeout = "timeout" // not Running within the flight's bound
)

// WakeMetrics receives one observation per wake (a flight, not a request).
type WakeMetrics interface {
	WakeFinished(from, result string, d time.Duration)
}

var (
	// ErrNotAsleep: the target is not something a request may wake.
	ErrNotAsleep = errors.New("instance is not asleep")
	// ErrWakeRefused: the host cannot take the instance now (503).
	ErrWakeRefused = errors.New("wake refused")
)

type flightKey struct {
	instance string
	opts     WakeOptions
}

// flight is one wake in progress; info and err are set before done closes.
type flight struct {
	done    chan struct{}
	waiters int
	info    WakeInfo
	err     error
}

// wakeFlights runs at most one wake per target.
type wakeFlights struct {
	waker   Waker
	metrics WakeMetrics
	timeout time.Duration
	log     *slog.Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	flights map[flightKey]*flight
}

// join returns the flight waking key, starting it when none is under way.
func (w *wakeFlights) join(key flightKey) (*flight, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ctx.Err() != nil {
		return nil, errors.New("ingress manager closed")
	}
	if f := w.flights[key]; f != nil {
		f.waiters++
		return f, nil
	}
	f := &flight{done: make(chan struct{}), waiters: 1}
	w.flights[key] = f
	w.wg.Add(1)
	go w.run(key, f)
	return f, nil
}

func (w *wakeFlights) run(key flightKey, f *flight) {
	defer w.wg.Done()
	ctx, cancel := context.WithTimeout(w.ctx, 2*w.timeout)
	defer cancel()
	start := time.Now()
	info, err := w.waker.Wake(ctx, key.instance, key.opts)
	d := time.Since(start)
	w.mu.Lock()
	delete(w.flights, key)
	f.info, f.err = info, err
	waiters := f.waiters
	w.mu.Unlock()
	close(f.done)

	if errors.Is(err, ErrNotAsleep) || (err == nil && info.From == "") {
		return // nothing was woken
	}
	result := WakeOK
	switch {
	case err == nil:
	case errors.Is(err, ErrWakeRefused):
		result = WakeRefused
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		result = WakeTimeout
	default:
		result = WakeFailed
	}
	if w.metrics != nil {
		w.metrics.WakeFinished(info.From, result, d)
	}
	if err != nil {
		w.log.Warn("wake on request failed", "instance", key.instance, "from", info.From, "result", result, "duration", d, "waiters", waiters, "error", err)
		return
	}
	w.log.Info("instance woken by a request", "instance", key.instance, "from", info.From, "duration", d, "waiters", waiters)
}

func (w *wakeFlights) close() {
	w.cancel()
	w.wg.Wait()
}

// wakeTarget holds a request whose target could not be resolved while a
// wake runs, then resolves again. On failure it has written the response
// and returns ok false.
func (m *Manager) wakeTarget(w http.ResponseWriter, r *http.Request, rule Rule, resolveErr error) (addr string, ok bool) {
	inst, port := rule.Target.Instance, rule.Target.Port
	unreachable := func(err error) {
		writeError(w, http.StatusBadGateway, "bad_gateway", fmt.Sprintf("instance %q port %d is not reachable: %v", inst, port, err))
	}
	f, err := m.wake.join(flightKey{inst, WakeOptions{Stopped: rule.WakeStopped}})
	if err != nil {
		unreachable(resolveErr)
		return "", false
	}
	t := time.NewTimer(m.wake.timeout)
	defer t.Stop()
	select {
	case <-f.done:
	case <-r.Context().Done():
		return "", false // the client left; the wake goes on
	case <-t.C:
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusGatewayTimeout, "wake_timeout",
			fmt.Sprintf("instance %q is waking up but was not Running within %s (daemon setting %s); retry shortly",
				inst, m.wake.timeout, WakeTimeoutSetting))
		return "", false
	}
	switch err := f.err; {
	case err == nil:
	case errors.Is(err, ErrNotAsleep):
		unreachable(fmt.Errorf("%v (%v)", resolveErr, err))
		return "", false
	case errors.Is(err, ErrWakeRefused):
		w.Header().Set("Retry-After", strconv.Itoa(int(m.wake.timeout.Seconds())))
		writeError(w, http.StatusServiceUnavailable, "wake_refused", fmt.Sprintf("instance %q could not be woken: %v", inst, err))
		return "", false
	default:
		writeError(w, http.StatusServiceUnavailable, "wake_failed", fmt.Sprintf("instance %q could not be woken: %v", inst, err))
		return "", false
	}
	addr, err = m.resolver.GuestAddr(r.Context(), inst, port)
	if err != nil {
		if f.info.From != "" {
			err = fmt.Errorf("after waking it from %s: %w", f.info.From, err)
		}
		unreachable(err)
		return "", false
	}
	if f.info.Booted {
		return addr, m.awaitListening(w, r, inst, addr, t.C)
	}
	return addr, true
}

// awaitListening holds a request for a freshly booted target until addr
// accepts a connection (its server starts after the program does), or
// the request's wake time is up (504).
func (m *Manager) awaitListening(w http.ResponseWriter, r *http.Request, inst, addr string, expired <-chan time.Time) bool {
	retry := time.NewTimer(0)
	defer retry.Stop()
	var last error
	for {
		select {
		case <-r.Context().Done():
			return false
		case <-expired:
			w.Header().Set("Retry-After", "5")
			writeError(w, http.StatusGatewayTimeout, "wake_timeout",
				fmt.Sprintf("instance %q was started but %s did not accept connections within %s (daemon setting %s): %v",
					inst, addr, m.wake.timeout, WakeTimeoutSetting, last))
			return false
		case <-retry.C:
		}
		ctx, cancel := context.WithTimeout(r.Context(), m.cfg.DialTimeout)
		c, err := m.dial(ctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			return true
		}
		last = err
		retry.Reset(100 * time.Millisecond)
	}
}
