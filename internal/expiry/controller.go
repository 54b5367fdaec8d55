package expiry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/pending"
)

// Item is one instance with a deadline.
type Item struct {
	ID string
	At time.Time
}

// Instances is what the controller needs from the instance manager.
type Instances interface {
	// ListExpiring returns every instance that has a deadline.
	ListExpiring(ctx context.Context) ([]Item, error)
	// ExpiryOf returns one instance's deadline (ok false: none). A missing
	// instance answers an error.
	ExpiryOf(ctx context.Context, id string) (at time.Time, ok bool, err error)
	// DeleteExpired deletes the instance if, under its operation lock, its
	// persisted deadline is still at or before now. It reports whether it
	// deleted; a missing instance is (false, nil).
	DeleteExpired(ctx context.Context, id string, now time.Time) (bool, error)
}

// Metrics receives the controller's counters (safe for concurrent use).
type Metrics interface {
	// Expired counts one expiry delete; ok is false when it failed.
	Expired(ok bool)
}

type nopMetrics struct{}

func (nopMetrics) Expired(bool) {}

// DefaultRetry is how long the controller waits before retrying a failed
// delete.
const DefaultRetry = 30 * time.Second

// Config configures a Controller.
type Config struct {
	Instances Instances   // required
	Events    *events.Bus // required
	Clock     events.Clock
	Logger    *slog.Logger
	Metrics   Metrics
	Retry     time.Duration
}

// Controller deletes instances whose deadline passed. Refresh is safe to
// call at any time.
type Controller struct {
	cfg     Config
	running atomic.Bool
	pending *pending.Set // Refresh → Run
}

// New returns a controller.
func New(cfg Config) (*Controller, error) {
	if cfg.Instances == nil || cfg.Events == nil {
		return nil, errors.New("expiry: Instances and Events are required")
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
	if cfg.Retry <= 0 {
		cfg.Retry = DefaultRetry
	}
	return &Controller{cfg: cfg, pending: pending.NewSet()}, nil
}

// Refresh asks the controller to re-read instance id's deadline (after a
// PATCH changed it).
func (c *Controller) Refresh(id string) { c.pending.Add(id) }

// Run arms the deadlines of every instance (deleting at once those already
// past), then follows the lifecycle bus and Refresh until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("expiry: controller already running")
	}
	defer c.running.Store(false)
	sub := c.cfg.Events.Subscribe(events.SubscribeOptions{Consumer: "expiry"})
	defer func() { sub.Close() }()
	due := map[string]time.Time{}
	c.reloadAll(ctx, due)
	for {
		c.fire(ctx, due)
		var timerC <-chan time.Time
		var t events.Timer
		if next, ok := earliest(due); ok {
			t = c.cfg.Clock.NewTimer(next.Sub(c.cfg.Clock.Now()))
			timerC = t.C()
		}
		stop := func() {
			if t != nil {
				t.Stop()
			}
		}
		select {
		case <-ctx.Done():
			stop()
			return nil
		case <-timerC:
		case <-c.pending.C():
			stop()
			for _, id := range c.pending.Take() {
				c.reload(ctx, due, id)
			}
		case ev, ok := <-sub.C():
			stop()
			if !ok {
				if ctx.Err() != nil || errors.Is(sub.Err(), events.ErrBusClosed) {
					return nil
				}
				// Lagged: resubscribe and re-read everything.
				sub.Close()
				sub = c.cfg.Events.Subscribe(events.SubscribeOptions{Consumer: "expiry"})
				c.reloadAll(ctx, due)
				continue
			}
			if ev.Type == events.TypeDeleted {
				delete(due, ev.InstanceID)
			} else {
				c.reload(ctx, due, ev.InstanceID)
			}
		}
	}
}

func earliest(due map[string]time.Time) (time.Time, bool) {
	var min time.Time
	found := false
	for _, at := range due {
		if !found || at.Before(min) {
			min, found = at, true
		}
	}
	return min, found
}

func (c *Controller) reloadAll(ctx context.Context, due map[string]time.Time) {
	items, err := c.cfg.Instances.ListExpiring(ctx)
	if err != nil {
		c.cfg.Logger.Error("list expiring instances", "err", err)
		return
	}
	clear(due)
	for _, it := range items {
		due[it.ID] = it.At
	}
}

func (c *Controller) reload(ctx context.Context, due map[string]time.Time, id string) {
	at, ok, err := c.cfg.Instances.ExpiryOf(ctx, id)
	if err != nil || !ok {
		delete(due, id)
		return
	}
	due[id] = at
}

// fire deletes every instance that is due now; a failed delete is retried
// after cfg.Retry.
func (c *Controller) fire(ctx context.Context, due map[string]time.Time) {
	now := c.cfg.Clock.Now()
	for id, at := range due {
		if at.After(now) {
			continue
		}
		deleted, err := c.cfg.Instances.DeleteExpired(ctx, id, now)
		switch {
		case err != nil:
			c.cfg.Metrics.Expired(false)
			c.cfg.Logger.Error("delete expired instance", "id", id, "err", fmt.Errorf("expiry: %w", err))
			due[id] = now.Add(c.cfg.Retry)
		case deleted:
			c.cfg.Metrics.Expired(true)
			c.cfg.Logger.Info("deleted expired instance", "id", id, "expired_at", at)
			delete(due, id)
		default:
			// Gone already, or the deadline moved (re-read it).
			c.reload(ctx, due, id)
			if at2, ok := due[id]; ok && !at2.After(now) {
				// Still due per the read but the locked check refused:
				// re-check on the next retry instead of spinning.
				due[id] = now.Add(c.cfg.Retry)
			}
		}
	}
}
