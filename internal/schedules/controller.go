package schedules

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
)

// Instances is what schedules need from the instance manager
// (*instances.Manager satisfies it).
type Instances interface {
	// Get resolves an instance; a missing one matches instances.ErrNotFound.
	Get(ctx context.Context, ref string) (*instances.Instance, error)
	CreateSnapshot(ctx context.Context, ref string, p instances.SnapshotParams) (*instances.Snapshot, error)
	// DeleteSnapshot: a missing snapshot matches instances.ErrSnapshotNotFound.
	DeleteSnapshot(ctx context.Context, ref string) error
}

// Metrics receives the controller's counters (safe for concurrent use).
type Metrics interface {
	// Run counts one scheduled run; result is "ok", "skipped" or "error".
	Run(result string)
	// Pruned counts snapshots deleted by retention.
	Pruned(n int)
}

type nopMetrics struct{}

func (nopMetrics) Run(string) {}
func (nopMetrics) Pruned(int) {}

// Config configures a Controller.
type Config struct {
	Dir       string      // required: where schedule records live
	Instances Instances   // required
	Events    *events.Bus // required
	Clock     events.Clock
	Logger    *slog.Logger
	Metrics   Metrics
}

// Controller owns the schedules: Get/Set/Delete (the API) and Run (the
// loop that takes and prunes snapshots). Get, Set and Delete are safe to
// call before and while Run runs.
type Controller struct {
	cfg     Config
	st      store
	running atomic.Bool
	kick    chan struct{}

	mu    sync.Mutex
	byID  map[string]*Schedule
	loadE []error
}

// New loads the persisted schedules and returns a controller.
func New(cfg Config) (*Controller, error) {
	if cfg.Dir == "" || cfg.Instances == nil || cfg.Events == nil {
		return nil, errors.New("schedules: Dir, Instances and Events are required")
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
	c := &Controller{cfg: cfg, st: store{dir: cfg.Dir}, kick: make(chan struct{}, 1)}
	c.byID, c.loadE = c.st.loadAll()
	for _, err := range c.loadE {
		cfg.Logger.Error("snapshot schedule not loaded", "err", err)
	}
	return c, nil
}

func (c *Controller) signal() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Get returns instance id's schedule (ErrNotFound: none).
func (c *Controller) Get(ctx context.Context, id string) (*Schedule, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sc, ok := c.byID[id]
	if !ok {
		return nil, fmt.Errorf("%w for instance %s", ErrNotFound, id)
	}
	return sc.clone(), nil
}

// Set creates or replaces instance id's schedule. The first run is one
// interval from now. A replaced schedule keeps its run history and the
// list of snapshots it took (retention keeps applying to them).
func (c *Controller) Set(ctx context.Context, id string, r Request) (*Schedule, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	now := c.cfg.Clock.Now().UTC()
	c.mu.Lock()
	defer c.mu.Unlock()
	sc := &Schedule{InstanceID: id, CreatedAt: now}
	if old, ok := c.byID[id]; ok {
		sc = old.clone()
	}
	sc.Interval, sc.NamePrefix, sc.Metadata, sc.Retention = r.Interval, r.NamePrefix, r.Metadata, r.Retention
	if sc.NamePrefix != nil && *sc.NamePrefix == "" {
		sc.NamePrefix = nil
	}
	sc.UpdatedAt = now
	sc.NextRunAt = now.Add(sc.interval())
	if err := c.st.put(sc); err != nil {
		return nil, err
	}
	c.byID[id] = sc
	c.signal()
	return sc.clone(), nil
}

// Delete removes instance id's schedule (ErrNotFound: none). Snapshots it
// took are kept.
func (c *Controller) Delete(ctx context.Context, id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byID[id]; !ok {
		return fmt.Errorf("%w for instance %s", ErrNotFound, id)
	}
	if err := c.st.remove(id); err != nil {
		return err
	}
	delete(c.byID, id)
	c.signal()
	return nil
}

// Run drops the schedules of instances that no longer exist, then runs
// every schedule when due (a run missed while the daemon was down runs once,
// now) until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("schedules: controller already running")
	}
	defer c.running.Store(false)
	sub := c.cfg.Events.Subscribe(events.SubscribeOptions{Consumer: "schedules"})
	defer func() { sub.Close() }()
	c.dropOrphans(ctx)
	for {
		c.runDue(ctx)
		var t events.Timer
		var timerC <-chan time.Time
		if next, ok := c.earliest(); ok {
			t = c.cfg.Clock.NewTimer(next.Sub(c.cfg.Clock.Now()))
			timerC = t.C()
		}
		select {
		case <-ctx.Done():
		case <-timerC:
		case <-c.kick:
		case ev, ok := <-sub.C():
			if !ok {
				if ctx.Err() == nil && !errors.Is(sub.Err(), events.ErrBusClosed) {
					sub.Close()
					sub = c.cfg.Events.Subscribe(events.SubscribeOptions{Consumer: "schedules"})
					c.dropOrphans(ctx)
				}
			} else if ev.Type == events.TypeDeleted {
				c.instanceGone(ev.InstanceID)
			}
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

func (c *Controller) earliest() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var min time.Time
	found := false
	for _, sc := range c.byID {
		if !found || sc.NextRunAt.Before(min) {
			min, found = sc.NextRunAt, true
		}
	}
	return min, found
}

// instanceGone deletes the schedule of a deleted instance.
func (c *Controller) instanceGone(id string) {
	if err := c.Delete(context.Background(), id); err != nil && !errors.Is(err, ErrNotFound) {
		c.cfg.Logger.Error("delete schedule of deleted instance", "id", id, "err", err)
	}
}

func (c *Controller) dropOrphans(ctx context.Context) {
	c.mu.Lock()
	ids := make([]string, 0, len(c.byID))
	for id := range c.byID {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	for _, id := range ids {
		if _, err := c.cfg.Instances.Get(ctx, id); errors.Is(err, instances.ErrNotFound) {
			c.instanceGone(id)
		}
	}
}

// runDue runs every schedule whose next_run_at has come, one at a time.
func (c *Controller) runDue(ctx context.Context) {
	for ctx.Err() == nil {
		now := c.cfg.Clock.Now()
		var due *Schedule
		c.mu.Lock()
		for _, sc := range c.byID {
			if !sc.NextRunAt.After(now) && (due == nil || sc.NextRunAt.Before(due.NextRunAt)) {
				due = sc
			}
		}
		if due != nil {
			due = due.clone()
		}
		c.mu.Unlock()
		if due == nil {
			return
		}
		c.runOne(ctx, due, now)
	}
}

// runOne takes one scheduled snapshot of sc's instance, prunes, and records
// the outcome (unless the schedule was deleted or replaced meanwhile).
func (c *Controller) runOne(ctx context.Context, sc *Schedule, now time.Time) {
	now = now.UTC()
	id := sc.InstanceID
	var runErr error
	result := "ok"
	in, err := c.cfg.Instances.Get(ctx, id)
	switch {
	case errors.Is(err, instances.ErrNotFound):
		c.instanceGone(id)
		return
	case err != nil:
		runErr, result = err, "error"
	case in.State != state.Running:
		runErr, result = fmt.Errorf("skipped: instance is %s; scheduled snapshots are taken of Running instances", in.State), "skipped"
	default:
		snap, err := c.cfg.Instances.CreateSnapshot(ctx, id, instances.SnapshotParams{
			Kind: instances.SnapshotStandby, Name: snapshotName(sc.NamePrefix, in.Name, now), Tags: sc.Metadata,
		})
		if err != nil {
			runErr, result = fmt.Errorf("snapshot: %w", err), "error"
		} else {
			sc.Taken = append(sc.Taken, Taken{ID: snap.ID, CreatedAt: snap.CreatedAt})
			sid := snap.ID
			sc.LastSnapshotID = &sid
		}
	}
	if err := c.prune(ctx, sc, now); err != nil && runErr == nil {
		runErr = err
		if result == "ok" {
			result = "error"
		}
	}
	c.cfg.Metrics.Run(result)
	sc.LastRunAt = &now
	sc.LastError = nil
	if runErr != nil {
		msg := runErr.Error()
		sc.LastError = &msg
		c.cfg.Logger.Warn("scheduled snapshot", "id", id, "result", result, "err", runErr)
	}
	sc.NextRunAt = now.Add(sc.interval())
	c.mu.Lock()
	defer c.mu.Unlock()
	cur, ok := c.byID[id]
	if !ok {
		return // deleted meanwhile; its snapshots stay
	}
	if !cur.UpdatedAt.Equal(sc.UpdatedAt) {
		// Replaced meanwhile: keep the new settings and next run, record
		// this run.
		next := cur.clone()
		next.LastRunAt, next.LastError, next.Taken = sc.LastRunAt, sc.LastError, sc.Taken
		if sc.LastSnapshotID != nil {
			next.LastSnapshotID = sc.LastSnapshotID
		}
		sc = next
	}
	if err := c.st.put(sc); err != nil {
		c.cfg.Logger.Error("persist schedule", "id", id, "err", err)
	}
	c.byID[id] = sc
}

// prune deletes this schedule's snapshots beyond retention: older than
// max_age, and all but the newest max_count.
func (c *Controller) prune(ctx context.Context, sc *Schedule, now time.Time) error {
	slices.SortStableFunc(sc.Taken, func(a, b Taken) int { return a.CreatedAt.Compare(b.CreatedAt) })
	var drop []Taken
	keep := sc.Taken
	if age := sc.maxAge(); age > 0 {
		cut := now.Add(-age)
		i := 0
		for i < len(keep) && keep[i].CreatedAt.Before(cut) {
			i++
		}
		drop, keep = append(drop, keep[:i]...), keep[i:]
	}
	if n := sc.Retention.MaxCount; n > 0 && len(keep) > n {
		drop, keep = append(drop, keep[:len(keep)-n]...), keep[len(keep)-n:]
	}
	var errs []error
	var failed []Taken
	pruned := 0
	for _, t := range drop {
		err := c.cfg.Instances.DeleteSnapshot(ctx, t.ID)
		switch {
		case err == nil:
			pruned++
		case errors.Is(err, instances.ErrSnapshotNotFound):
		default:
			failed = append(failed, t)
			errs = append(errs, fmt.Errorf("prune snapshot %s: %w", t.ID, err))
		}
	}
	c.cfg.Metrics.Pruned(pruned)
	sc.Taken = append(failed, keep...)
	return errors.Join(errs...)
}
