package health

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"hypeman/internal/durations"
	"hypeman/internal/events"
	"hypeman/internal/instances/state"
	"hypeman/internal/pending"
)

// Target is one instance as the health controller sees it.
type Target struct {
	ID    string
	State state.State
	// Check is the configured check (zero: none).
	Check Check
	// StartedAt is when the current (or last) boot started: the start of
	// the start period, and the identity of the boot.
	StartedAt time.Time
	Status    Status
}

// Instances is what the controller needs from the instance manager.
type Instances interface {
	// HealthTarget returns one instance. It must not wait for the
	// instance's operation lock.
	HealthTarget(ctx context.Context, id string) (Target, error)
	// ListHealthTargets returns every instance that has a check or a health
	// status other than disabled.
	ListHealthTargets(ctx context.Context) ([]Target, error)
	// UpdateHealthStatus calls fn with a fresh target (whose Status is the
	// current status) and a copy of the status to modify, and persists the
	// copy if fn changed it, atomically with every other write of the
	// status. fn is fast and does no I/O.
	UpdateHealthStatus(ctx context.Context, id string, fn func(t Target, st *Status)) error
}

// Prober runs one check against a guest. Every method must return promptly
// once ctx ends (ctx carries the check's timeout).
type Prober interface {
	// HTTP performs GET <scheme>://<guest>:port<path> and returns the
	// status (https: the guest's certificate is not verified).
	HTTP(ctx context.Context, instanceID string, port int, scheme, path string) (statusCode int, err error)
	// TCP opens (and closes) a TCP connection to <guest>:port.
	TCP(ctx context.Context, instanceID string, port int) error
	// Exec runs command in the guest (in workingDir when not empty) and
	// returns its exit code.
	Exec(ctx context.Context, instanceID string, command []string, workingDir string) (exitCode int, err error)
}

// Restarter is told when a boot's checks find the instance unhealthy (on
// every failed check while unhealthy; it must tolerate repeats), unless
// the check is ReportOnly. The
// restart controller implements it and decides, from the restart policy,
// whether that means a restart.
type Restarter interface {
	HealthFailed(instanceID string, boot time.Time, detail string)
}

// Outcome labels a check result in metrics.
type Outcome string

const (
	OutcomeSuccess Outcome = "success"
	OutcomeFailure Outcome = "failure"
	OutcomeTimeout Outcome = "timeout"
)

// Metrics receives check results (e.g. hypeman_health_checks_total{type,
// outcome} and a duration histogram). Safe for concurrent use.
type Metrics interface {
	CheckResult(t Type, o Outcome, d time.Duration)
}

type nopMetrics struct{}

func (nopMetrics) CheckResult(Type, Outcome, time.Duration) {}

// DefaultReconcileInterval is how often all instances are re-synced.
const DefaultReconcileInterval = 10 * time.Second

// Config configures a Controller.
type Config struct {
	Instances Instances   // required
	Prober    Prober      // required
	Events    *events.Bus // required
	// Restarter is told about unhealthy boots (nil: nobody is).
	Restarter Restarter
	Clock     events.Clock
	Logger    *slog.Logger
	Metrics   Metrics
	// ReconcileInterval (default DefaultReconcileInterval).
	ReconcileInterval time.Duration
}

// Controller runs health checks. Create with New, run with Run.
type Controller struct {
	cfg     Config
	running atomic.Bool
	pending *pending.Set // Refresh → loop
}

// New returns a controller.
func New(cfg Config) (*Controller, error) {
	if cfg.Instances == nil || cfg.Prober == nil || cfg.Events == nil {
		return nil, errors.New("health: Instances, Prober and Events are required")
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
	return &Controller{cfg: cfg, pending: pending.NewSet()}, nil
}

// Refresh asks for instance id to be re-synced soon, e.g. after its check
// was updated (otherwise the next reconcile picks the change up).
func (c *Controller) Refresh(id string) { c.pending.Add(id) }

// Run checks Running instances until ctx ends, then stops every check and
// returns. It can run once at a time.
func (c *Controller) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("health: controller already running")
	}
	defer c.running.Store(false)
	l := &loop{
		c: c, ctx: ctx, log: c.cfg.Logger,
		runners: map[string]*runner{}, busy: map[string]bool{}, dirty: map[string]bool{},
		results: make(chan syncResult),
	}
	return l.run()
}

type loop struct {
	c   *Controller
	ctx context.Context
	log *slog.Logger

	runners map[string]*runner
	busy    map[string]bool
	dirty   map[string]bool
	listing bool
	results chan syncResult
	wg      sync.WaitGroup // sync workers and runners
}

type runner struct {
	check  Check
	boot   time.Time
	cancel context.CancelFunc
}

type syncResult struct {
	id      string
	target  Target
	err     error
	list    bool
	targets []Target
}

func (l *loop) run() error {
	sub := l.c.cfg.Events.Subscribe(events.SubscribeOptions{Buffer: 256, Consumer: "health"})
	defer func() { sub.Close() }()
	evCh := sub.C()
	reconcile := l.c.cfg.Clock.NewTimer(0)
	defer func() {
		reconcile.Stop()
		for _, r := range l.runners {
			r.cancel()
		}
		l.wg.Wait()
	}()
	for {
		select {
		case <-l.ctx.Done():
			return nil
		case ev, ok := <-evCh:
			if !ok {
				err := sub.Err()
				if errors.Is(err, events.ErrLagged) {
					l.log.Warn("health controller lagged behind lifecycle events; resubscribing and reconciling", "err", err)
					sub = l.c.cfg.Events.Subscribe(events.SubscribeOptions{Buffer: 256, Consumer: "health"})
					evCh = sub.C()
					l.startList()
				} else {
					evCh = nil
				}
				continue
			}
			if ev.InstanceID == "" {
				continue
			}
			if ev.Type == events.TypeDeleted {
				l.stopRunner(ev.InstanceID)
				continue
			}
			if ev.To != state.Running {
				// Stop checking at once; the sync marks the status.
				l.stopRunner(ev.InstanceID)
			}
			l.requestSync(ev.InstanceID)
		case <-l.c.pending.C():
			for _, id := range l.c.pending.Take() {
				l.requestSync(id)
			}
		case <-reconcile.C():
			l.startList()
			reconcile = l.c.cfg.Clock.NewTimer(l.c.cfg.ReconcileInterval)
		case r := <-l.results:
			l.handle(r)
		}
	}
}

func (l *loop) spawn(fn func() syncResult) {
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

func (l *loop) requestSync(id string) {
	if l.busy[id] {
		l.dirty[id] = true
		return
	}
	l.busy[id] = true
	l.spawn(func() syncResult {
		t, err := l.c.cfg.Instances.HealthTarget(l.ctx, id)
		return syncResult{id: id, target: t, err: err}
	})
}

func (l *loop) startList() {
	if l.listing {
		return
	}
	l.listing = true
	l.spawn(func() syncResult {
		ts, err := l.c.cfg.Instances.ListHealthTargets(l.ctx)
		return syncResult{list: true, targets: ts, err: err}
	})
}

func (l *loop) handle(r syncResult) {
	if r.list {
		l.listing = false
		if r.err != nil {
			l.log.Warn("health reconcile: list instances", "err", r.err)
			return
		}
		// Re-read each instance through the per-instance sync: a listed
		// target may already be stale, and syncs are serialized per id.
		seen := map[string]bool{}
		for _, t := range r.targets {
			seen[t.ID] = true
			l.requestSync(t.ID)
		}
		for id := range l.runners {
			if !seen[id] {
				l.requestSync(id)
			}
		}
		return
	}
	delete(l.busy, r.id)
	if r.err != nil {
		l.stopRunner(r.id)
		l.log.Debug("health: instance not available", "id", r.id, "err", r.err)
	} else {
		l.ensure(r.target)
	}
	if l.dirty[r.id] {
		delete(l.dirty, r.id)
		l.requestSync(r.id)
	}
}

// ensure makes the checks for t match what t needs.
func (l *loop) ensure(t Target) {
	want := t.State == state.Running && !t.Check.IsZero()
	if r := l.runners[t.ID]; r != nil {
		if want && r.check.Equal(t.Check) && r.boot.Equal(t.StartedAt) {
			return
		}
		l.stopRunner(t.ID)
	}
	if want {
		l.startRunner(t)
		return
	}
	// Not checked: the status must say so (disabled or unknown).
	if t.Status.Status != Initial(t.Check).Status {
		l.markIdle(t.ID)
	}
}

func (l *loop) stopRunner(id string) {
	if r := l.runners[id]; r != nil {
		r.cancel()
		delete(l.runners, id)
	}
}

// markIdle persists unknown/disabled for an instance that is not checked.
func (l *loop) markIdle(id string) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		err := l.c.cfg.Instances.UpdateHealthStatus(l.ctx, id, func(t Target, st *Status) {
			switch {
			case t.Check.IsZero():
				if st.Status != Disabled {
					*st = Status{Status: Disabled}
				}
			case t.State != state.Running && st.Status != Unknown:
				*st = Stopped(*st)
			}
		})
		if err != nil {
			l.log.Debug("health: mark idle", "id", id, "err", err)
		}
	}()
}

func (l *loop) startRunner(t Target) {
	ctx, cancel := context.WithCancel(l.ctx)
	l.runners[t.ID] = &runner{check: t.Check, boot: t.StartedAt, cancel: cancel}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.c.runChecks(ctx, t)
	}()
	l.log.Debug("health checks started", "id", t.ID, "type", t.Check.Type, "interval", t.Check.Interval)
}

// runChecks probes one boot of one instance every Interval until ctx ends.
func (c *Controller) runChecks(ctx context.Context, t Target) {
	id, chk, boot := t.ID, t.Check, t.StartedAt
	if err := c.cfg.Instances.UpdateHealthStatus(ctx, id, func(cur Target, st *Status) {
		if cur.State == state.Running && cur.StartedAt.Equal(boot) {
			*st = Started(*st, boot)
		}
	}); err != nil {
		c.cfg.Logger.Debug("health: mark starting", "id", id, "err", err)
	}
	for {
		timer := c.cfg.Clock.NewTimer(chk.Interval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C():
		}
		start := c.cfg.Clock.Now()
		res, outcome := c.probe(ctx, id, chk)
		if ctx.Err() != nil {
			return // cancelled mid-probe: the result means nothing
		}
		now := c.cfg.Clock.Now()
		c.cfg.Metrics.CheckResult(chk.Type, outcome, now.Sub(start))
		var prev, next State
		stale := false
		err := c.cfg.Instances.UpdateHealthStatus(ctx, id, func(cur Target, st *Status) {
			if cur.State != state.Running || !cur.StartedAt.Equal(boot) || !cur.Check.Equal(chk) {
				stale = true
				return
			}
			prev = st.Status
			*st = Apply(chk, *st, res, now, boot)
			next = st.Status
		})
		if err != nil {
			if ctx.Err() == nil {
				c.cfg.Logger.Debug("health: persist status", "id", id, "err", err)
			}
			continue
		}
		if stale {
			continue // the loop will stop or replace this runner
		}
		if prev != next {
			lvl := slog.LevelInfo
			if next == Unhealthy {
				lvl = slog.LevelWarn
			}
			c.cfg.Logger.Log(ctx, lvl, "health status changed", "id", id, "from", prev, "to", next, "last_error", res.Err)
		}
		// A report-only check (a readiness check) stops at the status.
		if next == Unhealthy && !res.OK && c.cfg.Restarter != nil && !chk.ReportOnly {
			c.cfg.Restarter.HealthFailed(id, boot, res.Err)
		}
	}
}

var errProbeTimeout = errors.New("health check timed out")

// probe runs one check with its timeout, measured on the injected clock.
func (c *Controller) probe(ctx context.Context, id string, chk Check) (Result, Outcome) {
	pctx, cancel := context.WithCancelCause(ctx)
	timer := c.cfg.Clock.NewTimer(chk.Timeout)
	stop, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case <-timer.C():
			cancel(errProbeTimeout)
		case <-stop:
		}
	}()
	defer func() {
		close(stop)
		timer.Stop()
		<-exited
		cancel(nil)
	}()

	var err error
	switch chk.Type {
	case HTTP:
		var code int
		code, err = c.cfg.Prober.HTTP(pctx, id, chk.Port, cmp.Or(chk.Scheme, DefaultScheme), chk.Path)
		if err == nil && code != chk.ExpectedStatus {
			err = fmt.Errorf("HTTP status %d, want %d", code, chk.ExpectedStatus)
		}
	case TCP:
		err = c.cfg.Prober.TCP(pctx, id, chk.Port)
	case Exec:
		var code int
		code, err = c.cfg.Prober.Exec(pctx, id, chk.Command, chk.WorkingDir)
		if err == nil && code != 0 {
			err = fmt.Errorf("command exited with code %d", code)
		}
	default:
		err = fmt.Errorf("unknown check type %q", chk.Type)
	}
	switch {
	case err == nil:
		return Result{OK: true}, OutcomeSuccess
	case errors.Is(context.Cause(pctx), errProbeTimeout):
		return Result{Err: fmt.Sprintf("timed out after %s", durations.Format(chk.Timeout))}, OutcomeTimeout
	}
	return Result{Err: err.Error()}, OutcomeFailure
}
