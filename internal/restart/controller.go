package restart

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/instances/state"
	"hypeman/internal/pending"
)

// Instances is what the controller needs from the instance manager.
//
// Status writes must be atomic with respect to each other and to the
// manager's own status writes (MarkManualStop in stop/delete, ClearForStart
// in start, ForPolicyChange in update): each method reads the current
// status, lets the callback modify a copy, and persists the copy if it
// changed, all under the instance's lock.
type Instances interface {
	// RestartSnapshot returns one instance. It must not wait for the
	// instance's operation lock (the wait endpoint calls it, through
	// Controller.RestartPending, while a stop may hold that lock) and must
	// be cheap for a Stopped instance.
	RestartSnapshot(ctx context.Context, id string) (Snapshot, error)
	// ListRestartable returns every instance whose policy is not never.
	ListRestartable(ctx context.Context) ([]Snapshot, error)
	// UpdateRestartStatus calls fn with a fresh snapshot (whose Status is
	// the current status) and a copy of the status to modify, and persists
	// the copy if fn changed it. fn is fast and does no I/O. It need not
	// hold the operation lock, but must be atomic with every status write.
	UpdateRestartStatus(ctx context.Context, id string, fn func(snap Snapshot, st *Status)) error
	// StartForRestart takes the instance's operation lock (the one API
	// start, stop and delete take), builds a fresh snapshot, calls check,
	// persists the status if check changed it and, only if check returned
	// true, starts the instance like API start does (but without
	// ClearForStart), before releasing the lock. It returns the start's
	// error. Because check and start share one critical section, a manual
	// stop that happened after the controller decided is seen by check.
	StartForRestart(ctx context.Context, id string, check func(snap Snapshot, st *Status) bool) error
	// StopForRestart is StartForRestart's twin for health restarts: if check
	// returns true it stops the instance like API stop does (graceful), but
	// without MarkManualStop, and records the exit as StoppedByHypeman.
	StopForRestart(ctx context.Context, id string, check func(snap Snapshot, st *Status) bool) error
}

// Metrics receives the controller's counters. Implementations must be safe
// for concurrent use.
type Metrics interface {
	// RestartAttempted counts one restart started by the controller
	// (e.g. hypeman_restarts_total{reason,result}); ok is false when the
	// start failed.
	RestartAttempted(reason Reason, ok bool)
	// RestartBlocked counts an instance whose restarts got blocked
	// (e.g. hypeman_restarts_blocked_total{reason}); counted once per
	// stopped boot (again after a daemon restart).
	RestartBlocked(reason BlockedReason)
	// BackoffObserved records how long an instance stayed Stopped before
	// the controller restarted it (e.g. histogram
	// hypeman_restart_backoff_seconds{reason}).
	BackoffObserved(reason Reason, d time.Duration)
}

type nopMetrics struct{}

func (nopMetrics) RestartAttempted(Reason, bool)         {}
func (nopMetrics) RestartBlocked(BlockedReason)          {}
func (nopMetrics) BackoffObserved(Reason, time.Duration) {}

// DefaultReconcileInterval is how often every restartable instance is
// re-evaluated, besides reacting to events.
const DefaultReconcileInterval = 10 * time.Second

// Config configures a Controller.
type Config struct {
	Instances Instances   // required
	Events    *events.Bus // required
	Clock     events.Clock
	Logger    *slog.Logger
	Metrics   Metrics
	// ReconcileInterval (default DefaultReconcileInterval): the controller
	// re-evaluates every restartable instance at start and this often, so
	// a missed event or a daemon restart mid-backoff is caught up.
	ReconcileInterval time.Duration
	// Rand returns the jitter draw in [0,1) (default math/rand/v2.Float64).
	// It is called from several goroutines.
	Rand func() float64
	// SnapshotTimeout bounds RestartPending's read (default 2s).
	SnapshotTimeout time.Duration
}

// Controller applies restart policies. Create it with New, run it with Run;
// RestartPending, HealthFailed and Refresh are safe to call concurrently,
// before and while Run runs.
type Controller struct {
	cfg     Config
	running atomic.Bool
	pending *pending.Map[request] // Refresh, HealthFailed → loop
}

// request is what Refresh and HealthFailed left for the loop about one
// instance.
type request struct {
	eval   bool       // Refresh: re-evaluate the policy
	health *healthReq // HealthFailed: the latest report, if any
}

type healthReq struct {
	boot   time.Time
	detail string
}

// New returns a controller.
func New(cfg Config) (*Controller, error) {
	if cfg.Instances == nil || cfg.Events == nil {
		return nil, errors.New("restart: Instances and Events are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = events.SystemClock()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = DefaultReconcileInterval
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	if cfg.SnapshotTimeout <= 0 {
		cfg.SnapshotTimeout = 2 * time.Second
	}
	return &Controller{cfg: cfg, pending: pending.NewMap[request]()}, nil
}

// RestartPending is the wait endpoint's hook (Manager.SetRestartPending):
// see Pending. Errors (e.g. the instance is gone) answer false.
func (c *Controller) RestartPending(id string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.SnapshotTimeout)
	defer cancel()
	snap, err := c.cfg.Instances.RestartSnapshot(ctx, id)
	if err != nil {
		return false
	}
	return Pending(snap, c.cfg.Clock.Now())
}

// HealthFailed reports that the health check of instance id, in the boot
// that started at boot, found it unhealthy. It returns at once; the
// controller then (if the policy is on_failure or always, and within
// max_attempts) stops the instance with NextAttemptAt set and
// last_reason=health_check_failed, and restarts it after the backoff. A
// report about an earlier boot, or for an instance no longer Running, is
// ignored. Repeated reports are harmless.
func (c *Controller) HealthFailed(id string, boot time.Time, detail string) {
	c.pending.Update(id, func(r request) request {
		r.health = &healthReq{boot: boot, detail: detail}
		return r
	})
}

// Refresh asks for instance id to be re-evaluated soon, e.g. after its
// policy was updated (otherwise the next reconcile picks the change up).
func (c *Controller) Refresh(id string) {
	c.pending.Update(id, func(r request) request {
		r.eval = true
		return r
	})
}

// Run subscribes to the lifecycle events, re-evaluates every restartable
// instance at once and every ReconcileInterval, and restarts instances when
// due, until ctx ends. It waits for its workers before returning. It can
// run once at a time.
func (c *Controller) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("restart: controller already running")
	}
	defer c.running.Store(false)
	l := &loop{
		c: c, ctx: ctx, log: c.cfg.Logger,
		due: map[string]time.Time{}, busy: map[string]bool{}, dirty: map[string]bool{},
		health: map[string]healthReq{}, blockedSeen: map[string]string{},
		results: make(chan result),
	}
	return l.run()
}

// loop is the controller's single-threaded state; Instances calls run in
// per-instance workers (at most one per instance at a time) whose results
// come back on results.
type loop struct {
	c   *Controller
	ctx context.Context
	log *slog.Logger

	sub         *events.Subscription
	due         map[string]time.Time // scheduled restarts
	busy        map[string]bool      // a worker runs for this instance
	dirty       map[string]bool      // re-evaluate when the worker is done
	health      map[string]healthReq // health reports waiting for the worker
	blockedSeen map[string]string    // last block counted in metrics
	listing     bool

	results chan result
	wg      sync.WaitGroup
	wake    events.Timer
	wakeAt  time.Time
}

type resultKind int

const (
	resEval resultKind = iota
	resAttempt
	resHealth
	resList
)

type result struct {
	kind     resultKind
	id       string
	decision Decision
	snap     Snapshot
	err      error
	ids      []string // resList
}

const subscriptionBuffer = 256

func (l *loop) subscribe() {
	l.sub = l.c.cfg.Events.Subscribe(events.SubscribeOptions{Buffer: subscriptionBuffer, Consumer: "restart"})
}

func (l *loop) run() error {
	l.subscribe()
	defer func() { l.sub.Close() }()
	evCh := l.sub.C()
	reconcile := l.c.cfg.Clock.NewTimer(0) // reconcile at start
	defer func() {
		reconcile.Stop()
		if l.wake != nil {
			l.wake.Stop()
		}
		l.wg.Wait()
	}()
	for {
		var wakeC <-chan time.Time
		if l.wake != nil {
			wakeC = l.wake.C()
		}
		select {
		case <-l.ctx.Done():
			return nil
		case ev, ok := <-evCh:
			if !ok {
				err := l.sub.Err()
				if errors.Is(err, events.ErrLagged) {
					l.log.Warn("restart controller lagged behind lifecycle events; resubscribing and reconciling", "err", err)
					l.subscribe()
					evCh = l.sub.C()
					l.startList()
				} else {
					l.log.Warn("restart controller: event subscription ended; relying on periodic reconcile", "err", err)
					evCh = nil
				}
				continue
			}
			if ev.InstanceID == "" {
				continue
			}
			if ev.Type == events.TypeDeleted {
				delete(l.due, ev.InstanceID)
				delete(l.blockedSeen, ev.InstanceID)
				delete(l.health, ev.InstanceID)
				l.rearm()
				continue
			}
			// Only a Stopped instance can need a restart; any other
			// transition of a scheduled one cancels (re-decides) it.
			if _, scheduled := l.due[ev.InstanceID]; ev.To == state.Stopped || scheduled {
				l.requestEval(ev.InstanceID)
			}
		case <-l.c.pending.C():
			for id, r := range l.c.pending.Take() {
				// Health first: an eval of the same id then waits for
				// the health stop to finish (the id is busy).
				if r.health != nil {
					l.requestHealth(id, *r.health)
				}
				if r.eval {
					l.requestEval(id)
				}
			}
		case <-reconcile.C():
			l.startList()
			reconcile = l.c.cfg.Clock.NewTimer(l.c.cfg.ReconcileInterval)
		case <-wakeC:
			l.wake, l.wakeAt = nil, time.Time{}
			l.fireDue()
		case r := <-l.results:
			l.handle(r)
		}
	}
}

// spawn runs fn for id in a worker; id is busy until its result is handled.
func (l *loop) spawn(id string, fn func() result) {
	if id != "" {
		l.busy[id] = true
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		r := fn()
		select {
		case l.results <- r:
		case <-l.ctx.Done():
		}
	}()
}

func (l *loop) requestEval(id string) {
	if l.busy[id] {
		l.dirty[id] = true
		return
	}
	l.spawn(id, func() result { return l.evaluate(id) })
}

func (l *loop) requestHealth(id string, h healthReq) {
	if l.busy[id] {
		l.health[id] = h
		return
	}
	l.spawn(id, func() result { return l.healthStop(id, h) })
}

func (l *loop) startList() {
	if l.listing {
		return
	}
	l.listing = true
	l.spawn("", func() result {
		snaps, err := l.c.cfg.Instances.ListRestartable(l.ctx)
		ids := make([]string, 0, len(snaps))
		for _, s := range snaps {
			ids = append(ids, s.ID)
		}
		return result{kind: resList, ids: ids, err: err}
	})
}

func (l *loop) handle(r result) {
	if r.kind == resList {
		l.listing = false
		if r.err != nil {
			l.log.Warn("restart reconcile: list instances", "err", r.err)
			return
		}
		seen := make(map[string]bool, len(r.ids))
		for _, id := range r.ids {
			seen[id] = true
			l.requestEval(id)
		}
		for id := range l.due { // scheduled but no longer restartable: re-check
			if !seen[id] {
				l.requestEval(id)
			}
		}
		return
	}
	id := r.id
	delete(l.busy, id)
	switch r.kind {
	case resEval:
		l.applyEval(r)
	case resHealth:
		if r.err == nil && r.decision.Action == ActionBlock {
			l.countBlock(id, r.decision, r.snap)
		}
		l.dirty[id] = true // the instance changed: decide again
	case resAttempt:
		l.dirty[id] = true
	}
	if h, ok := l.health[id]; ok {
		delete(l.health, id)
		l.requestHealth(id, h)
	} else if l.dirty[id] {
		delete(l.dirty, id)
		l.requestEval(id)
	}
	l.rearm()
}

func (l *loop) applyEval(r result) {
	id, d := r.id, r.decision
	if r.err != nil {
		delete(l.due, id)
		l.log.Debug("restart: cannot evaluate instance", "id", id, "err", r.err)
		return
	}
	switch d.Action {
	case ActionSchedule:
		if prev, ok := l.due[id]; !ok || !prev.Equal(d.At) {
			l.log.Info("restart scheduled", "id", id, "attempt", d.Attempt, "reason", d.Reason,
				"at", d.At, "in", d.At.Sub(l.c.cfg.Clock.Now()).Round(time.Millisecond))
		}
		l.due[id] = d.At
	case ActionBlock:
		delete(l.due, id)
		l.countBlock(id, d, r.snap)
	default:
		delete(l.due, id)
	}
}

// countBlock counts a block once per boot (and block reason).
func (l *loop) countBlock(id string, d Decision, snap Snapshot) {
	key := fmt.Sprint(d.Blocked, snap.StartedAt.UnixNano(), snap.StoppedAt.UnixNano())
	if l.blockedSeen[id] == key {
		return
	}
	l.blockedSeen[id] = key
	l.c.cfg.Metrics.RestartBlocked(d.Blocked)
	l.log.Info("restart blocked", "id", id, "reason", d.Blocked, "why", d.Why)
}

// rearm points the wake timer at the earliest due restart.
func (l *loop) rearm() {
	var next time.Time
	for id, at := range l.due {
		if l.busy[id] {
			continue
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	if l.wake != nil && l.wakeAt.Equal(next) && !next.IsZero() {
		return
	}
	if l.wake != nil {
		l.wake.Stop()
		l.wake, l.wakeAt = nil, time.Time{}
	}
	if next.IsZero() {
		return
	}
	l.wake, l.wakeAt = l.c.cfg.Clock.NewTimer(next.Sub(l.c.cfg.Clock.Now())), next
}

func (l *loop) fireDue() {
	now := l.c.cfg.Clock.Now()
	for id, at := range l.due {
		if at.After(now) || l.busy[id] {
			continue
		}
		delete(l.due, id)
		l.spawn(id, func() result { return l.attempt(id) })
	}
	l.rearm()
}

// evaluate decides for one instance and persists a new schedule or block.
func (l *loop) evaluate(id string) result {
	inst := l.c.cfg.Instances
	snap, err := inst.RestartSnapshot(l.ctx, id)
	if err != nil {
		return result{kind: resEval, id: id, err: err}
	}
	now, rnd := l.c.cfg.Clock.Now(), l.c.cfg.Rand()
	d := Decide(snap.Input(now, rnd, false))
	if (d.Action == ActionSchedule || d.Action == ActionBlock) && d.needsWrite(snap.Status) {
		var fresh Snapshot
		err := inst.UpdateRestartStatus(l.ctx, id, func(s Snapshot, st *Status) {
			s.Status = *st
			fresh = s
			d = Decide(s.Input(now, rnd, false))
			d.apply(st)
		})
		if err != nil {
			return result{kind: resEval, id: id, err: fmt.Errorf("persist restart status: %w", err)}
		}
		snap = fresh
	}
	return result{kind: resEval, id: id, decision: d, snap: snap}
}

// attempt starts a due instance through StartForRestart; the check re-runs
// Decide on the state seen under the instance lock.
func (l *loop) attempt(id string) result {
	inst := l.c.cfg.Instances
	now, rnd := l.c.cfg.Clock.Now(), l.c.cfg.Rand()
	var (
		d       Decision
		proceed bool
		stopped time.Time
	)
	err := inst.StartForRestart(l.ctx, id, func(s Snapshot, st *Status) bool {
		s.Status = *st
		d = Decide(s.Input(now, rnd, false))
		if d.Action != ActionSchedule || d.At.After(now) {
			return false
		}
		stopped = s.StoppedAt
		st.recordAttempt(d, now)
		proceed = true
		return true
	})
	if !proceed {
		if err != nil {
			l.log.Debug("restart: start check failed", "id", id, "err", err)
		} else {
			l.log.Debug("restart: not restarting after all", "id", id, "why", d.Why)
		}
		return result{kind: resAttempt, id: id, decision: d, err: err}
	}
	l.c.cfg.Metrics.RestartAttempted(d.Reason, err == nil)
	if !stopped.IsZero() {
		l.c.cfg.Metrics.BackoffObserved(d.Reason, now.Sub(stopped))
	}
	if err == nil {
		l.log.Info("restarted instance", "id", id, "attempt", d.Attempt, "reason", d.Reason)
		return result{kind: resAttempt, id: id, decision: d}
	}
	l.log.Warn("restart attempt failed to start the instance", "id", id, "attempt", d.Attempt, "reason", d.Reason, "err", err)
	if l.ctx.Err() == nil {
		l.scheduleAfterFailedStart(id, err)
	}
	return result{kind: resAttempt, id: id, decision: d, err: err}
}

// scheduleAfterFailedStart schedules the next attempt after a restart whose
// start failed, as a launch failure, whatever exit information the manager
// recorded for it (so a failed restart never ends the series silently).
func (l *loop) scheduleAfterFailedStart(id string, startErr error) {
	now, rnd := l.c.cfg.Clock.Now(), l.c.cfg.Rand()
	err := l.c.cfg.Instances.UpdateRestartStatus(l.ctx, id, func(s Snapshot, st *Status) {
		if s.State != state.Stopped || !st.NextAttemptAt.IsZero() || st.BlockedReason != "" {
			return
		}
		s.Status = *st
		in := s.Input(now, rnd, false)
		in.Exit = ExitInfo{LaunchFailed: true, Message: startErr.Error()}
		if in.StoppedAt.IsZero() {
			in.StoppedAt = now
		}
		Decide(in).apply(st)
	})
	if err != nil {
		l.log.Debug("restart: schedule after failed start", "id", id, "err", err)
	}
}

// healthStop stops an unhealthy instance through StopForRestart with the
// next attempt already scheduled.
func (l *loop) healthStop(id string, h healthReq) result {
	now, rnd := l.c.cfg.Clock.Now(), l.c.cfg.Rand()
	var (
		d    Decision
		snap Snapshot
	)
	err := l.c.cfg.Instances.StopForRestart(l.ctx, id, func(s Snapshot, st *Status) bool {
		s.Status = *st
		snap = s
		if s.State != state.Running || (!h.boot.IsZero() && !s.StartedAt.Equal(h.boot)) {
			d = none("health failure is about an earlier boot or the instance is no longer Running")
			return false
		}
		d = Decide(s.Input(now, rnd, true))
		d.apply(st)
		return d.Action == ActionSchedule
	})
	switch {
	case err != nil:
		l.log.Warn("health restart: stop failed", "id", id, "err", err)
	case d.Action == ActionSchedule:
		l.log.Info("stopped unhealthy instance; restart scheduled", "id", id, "attempt", d.Attempt,
			"at", d.At, "health", h.detail)
	case d.Action == ActionBlock:
		l.log.Warn("unhealthy instance left running: restarts blocked", "id", id, "reason", d.Blocked, "health", h.detail)
	}
	return result{kind: resHealth, id: id, decision: d, snap: snap, err: err}
}
