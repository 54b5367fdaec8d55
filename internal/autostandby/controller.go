package autostandby

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/instances/state"
	"hypeman/internal/pending"
)

// Snapshot is what the controller needs to know about one instance.
type Snapshot struct {
	ID    string
	State state.State
	// Policy is the persisted auto_standby policy (zero: none).
	Policy Policy
	// NetworkDisabled: the instance has no network (never tracked).
	NetworkDisabled bool
	// GuestIP is the guest's address while it has a lease ("" otherwise).
	GuestIP string
}

// Instances is what the controller needs from the instance manager.
type Instances interface {
	// AutoStandbySnapshot returns one instance (without waiting for its
	// operation lock).
	AutoStandbySnapshot(ctx context.Context, id string) (Snapshot, error)
	// ListAutoStandby returns every instance with a configured policy.
	ListAutoStandby(ctx context.Context) ([]Snapshot, error)
	// StandbyIfIdle takes the instance's operation lock, refuses unless it
	// is Running, pauses the VM and calls check. A non-nil error from check
	// resumes the VM and is returned (wrapped); otherwise the paused VM is
	// saved and ended like API standby does. check runs while the guest
	// cannot answer anything, so no connection can complete in between.
	StandbyIfIdle(ctx context.Context, id string, check func(ctx context.Context) error) error
}

// Metrics receives the controller's counters (safe for concurrent use).
type Metrics interface {
	// AutoStandby counts one standby attempt; result is "ok", "busy" (a
	// connection appeared while paused: resumed instead) or "error".
	AutoStandby(result string)
	// AutoStandbyHold counts one hold.
	AutoStandbyHold()
}

type nopMetrics struct{}

func (nopMetrics) AutoStandby(string) {}
func (nopMetrics) AutoStandbyHold()   {}

// ErrBusy is returned by the standby check when a qualifying connection
// appeared: the instance stays awake.
var ErrBusy = errors.New("auto-standby: inbound connection appeared; instance kept running")

// Defaults.
const (
	DefaultPollInterval      = time.Second
	DefaultReconcileInterval = 30 * time.Second
)

// Config configures a Controller.
type Config struct {
	Instances Instances   // required
	Observer  Observer    // required
	Events    *events.Bus // required
	Clock     events.Clock
	Logger    *slog.Logger
	Metrics   Metrics
	// HoldsFile persists holds ("" keeps them in memory only).
	HoldsFile string
	// PollInterval is how often conntrack is read (default 1s).
	PollInterval time.Duration
	// ReconcileInterval re-lists the instances with a policy, besides
	// reacting to events (default 30s).
	ReconcileInterval time.Duration
}

// track is the controller's view of one instance.
type track struct {
	snap      Snapshot
	seen      map[key]bool // connections present at the last poll
	polled    bool         // seen is valid
	active    int          // qualifying active connections at the last poll
	idleSince time.Time    // zero: not idle (or not yet observed)
	lastSeen  time.Time    // last qualifying activity
	requested bool         // a standby is being taken
	err       string       // observer / standby error, cleared on success
}

// Controller puts idle instances on standby. Create with New, run with Run;
// Status, Hold and Refresh are safe to call concurrently.
type Controller struct {
	cfg   Config
	holds *holdStore

	mu     sync.Mutex
	tracks map[string]*track

	pending *pending.Set // Refresh → Run
}

// New returns a controller; it loads the persisted holds.
func New(cfg Config) (*Controller, error) {
	if cfg.Instances == nil || cfg.Observer == nil || cfg.Events == nil {
		return nil, errors.New("autostandby: Instances, Observer and Events are required")
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
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = DefaultReconcileInterval
	}
	holds, err := loadHolds(cfg.HoldsFile)
	if err != nil {
		return nil, err
	}
	return &Controller{cfg: cfg, holds: holds, tracks: map[string]*track{}, pending: pending.NewSet()}, nil
}

// Refresh asks for instance id to be re-read soon (after its policy changed).
func (c *Controller) Refresh(id string) { c.pending.Add(id) }

// Run reacts to lifecycle events and polls the connection observer until
// ctx ends. It waits for standbys it started before returning.
func (c *Controller) Run(ctx context.Context) error {
	sub := c.cfg.Events.Subscribe(events.SubscribeOptions{Buffer: 256, Consumer: "autostandby"})
	defer func() { sub.Close() }()
	evCh := sub.C()
	var wg sync.WaitGroup
	defer wg.Wait()
	c.reconcile(ctx)
	poll := c.cfg.Clock.NewTimer(c.cfg.PollInterval)
	lastReconcile := c.cfg.Clock.Now()
	defer func() { poll.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-evCh:
			if !ok {
				// Lagged or closed: resubscribe and re-list everything.
				if errors.Is(sub.Err(), events.ErrBusClosed) {
					evCh = nil
					continue
				}
				sub = c.cfg.Events.Subscribe(events.SubscribeOptions{Buffer: 256, Consumer: "autostandby"})
				evCh = sub.C()
				c.reconcile(ctx)
				continue
			}
			if ev.InstanceID == "" {
				continue
			}
			if ev.Type == events.TypeDeleted {
				c.forget(ev.InstanceID)
				continue
			}
			c.refreshOne(ctx, ev.InstanceID)
		case <-c.pending.C():
			for _, id := range c.pending.Take() {
				c.refreshOne(ctx, id)
			}
		case <-poll.C():
			if now := c.cfg.Clock.Now(); now.Sub(lastReconcile) >= c.cfg.ReconcileInterval {
				c.reconcile(ctx)
				lastReconcile = now
			}
			for _, id := range c.poll(ctx) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c.standby(ctx, id)
				}()
			}
			poll = c.cfg.Clock.NewTimer(c.cfg.PollInterval)
		}
	}
}

func (c *Controller) forget(id string) {
	c.mu.Lock()
	delete(c.tracks, id)
	c.mu.Unlock()
	if err := c.holds.remove(id); err != nil {
		c.cfg.Logger.Warn("auto-standby: persist holds", "err", err)
	}
}

// reconcile re-lists every instance with a policy.
func (c *Controller) reconcile(ctx context.Context) {
	snaps, err := c.cfg.Instances.ListAutoStandby(ctx)
	if err != nil {
		c.cfg.Logger.Warn("auto-standby: list instances", "err", err)
		return
	}
	present := map[string]bool{}
	for _, s := range snaps {
		present[s.ID] = true
		c.setSnapshot(s)
	}
	c.mu.Lock()
	for id := range c.tracks {
		if !present[id] {
			delete(c.tracks, id)
		}
	}
	c.mu.Unlock()
}

func (c *Controller) refreshOne(ctx context.Context, id string) {
	s, err := c.cfg.Instances.AutoStandbySnapshot(ctx, id)
	if err != nil {
		c.mu.Lock()
		delete(c.tracks, id)
		c.mu.Unlock()
		return
	}
	c.setSnapshot(s)
}

// setSnapshot records s; a change of state, address or policy restarts the
// observation (a fresh countdown).
func (c *Controller) setSnapshot(s Snapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.Policy.IsZero() {
		delete(c.tracks, s.ID)
		return
	}
	t := c.tracks[s.ID]
	// While a standby is being taken the track stays as it is: its seen
	// set is what the paused re-check compares with (the pause itself
	// publishes state changes); standby() resets it afterwards.
	if t == nil || !t.requested && (t.snap.State != s.State || t.snap.GuestIP != s.GuestIP || !samePolicy(t.snap.Policy, s.Policy)) {
		t = &track{}
		c.tracks[s.ID] = t
	}
	t.snap = s
}

func samePolicy(a, b Policy) bool {
	return a.Configured == b.Configured && a.Enabled == b.Enabled && a.IdleTimeout == b.IdleTimeout &&
		fmt.Sprint(a.IgnoreSourceCIDRs) == fmt.Sprint(b.IgnoreSourceCIDRs) &&
		fmt.Sprint(a.IgnoreDestinationPorts) == fmt.Sprint(b.IgnoreDestinationPorts)
}

// watched reports whether t is observed: Running, enabled, with an address.
func watched(t *track) (netip.Addr, bool) {
	s := t.snap
	if !s.Policy.Enabled || s.State != state.Running || s.NetworkDisabled {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(s.GuestIP)
	if err != nil {
		return netip.Addr{}, false
	}
	return ip.Unmap(), true
}

// poll reads the observer once, updates every watched instance and returns
// the instances whose standby is due (marked requested). Run calls it every
// PollInterval; tests call it directly.
func (c *Controller) poll(ctx context.Context) []string {
	c.mu.Lock()
	guests := map[netip.Addr]bool{}
	for _, t := range c.tracks {
		if ip, ok := watched(t); ok && !t.requested {
			guests[ip] = true
		}
	}
	c.mu.Unlock()
	if len(guests) == 0 {
		return nil
	}
	conns, err := c.cfg.Observer.Connections(ctx, guests)
	now := c.cfg.Clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var due []string
	for id, t := range c.tracks {
		ip, ok := watched(t)
		if !ok || t.requested {
			continue
		}
		if err != nil {
			t.err = err.Error()
			t.idleSince = time.Time{} // no countdown on a blind observer
			continue
		}
		t.err = ""
		f := t.snap.Policy.filter()
		seen := map[key]bool{}
		active, fresh := 0, false
		for _, cn := range conns {
			if cn.Dst != ip || !f.qualifies(cn) {
				continue
			}
			k := cn.key()
			seen[k] = true
			if cn.Active {
				active++
			}
			if t.polled && !t.seen[k] {
				fresh = true
			}
		}
		t.seen, t.active = seen, active
		t.polled = true
		switch {
		case active > 0 || fresh:
			t.lastSeen = now
			t.idleSince = time.Time{}
			if active == 0 {
				// A connection came and went between polls: idle from now.
				t.idleSince = now
			}
		case t.idleSince.IsZero():
			t.idleSince = now
		}
		if active == 0 && !t.idleSince.IsZero() && !now.Before(c.nextStandby(id, t)) {
			t.requested = true
			due = append(due, id)
		}
	}
	return due
}

// nextStandby is when t's countdown ends, a hold included (caller holds mu).
func (c *Controller) nextStandby(id string, t *track) time.Time {
	at := t.idleSince.Add(t.snap.Policy.Timeout())
	if h, ok := c.holds.get(id); ok && h.After(at) {
		at = h
	}
	return at
}

// standby takes a due standby through the manager, re-checking the
// connections while the VM is paused.
func (c *Controller) standby(ctx context.Context, id string) {
	err := c.cfg.Instances.StandbyIfIdle(ctx, id, func(ctx context.Context) error { return c.recheck(ctx, id) })
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tracks[id]
	switch {
	case err == nil:
		c.cfg.Metrics.AutoStandby("ok")
		c.cfg.Logger.Info("auto-standby: instance was idle; put on standby", "id", id)
	case errors.Is(err, ErrBusy):
		c.cfg.Metrics.AutoStandby("busy")
		c.cfg.Logger.Info("auto-standby: a connection appeared while pausing; instance resumed", "id", id)
		if t != nil {
			now := c.cfg.Clock.Now()
			t.lastSeen, t.idleSince, t.polled = now, time.Time{}, false
		}
	default:
		c.cfg.Metrics.AutoStandby("error")
		c.cfg.Logger.Warn("auto-standby: standby failed", "id", id, "err", err)
		if t != nil {
			t.err, t.idleSince = err.Error(), time.Time{}
		}
	}
	if t != nil {
		t.requested = false
		if err == nil {
			// On standby now: the next snapshot (the Standby event)
			// starts a fresh track.
			t.polled, t.seen, t.idleSince = false, nil, time.Time{}
		}
	}
}

// recheck is the check run while the VM is paused: any qualifying
// connection that is active, or that was not there at the last poll, keeps
// the instance awake. Observer errors refuse the standby too.
func (c *Controller) recheck(ctx context.Context, id string) error {
	c.mu.Lock()
	t := c.tracks[id]
	if t == nil {
		c.mu.Unlock()
		return fmt.Errorf("%w: instance no longer tracked", ErrBusy)
	}
	ip, _ := netip.ParseAddr(t.snap.GuestIP)
	ip = ip.Unmap()
	f := t.snap.Policy.filter()
	seen := t.seen
	c.mu.Unlock()
	if h, ok := c.holds.get(id); ok && c.cfg.Clock.Now().Before(h) {
		return fmt.Errorf("%w: held until %s", ErrBusy, h.Format(time.RFC3339))
	}
	conns, err := c.cfg.Observer.Connections(ctx, map[netip.Addr]bool{ip: true})
	if err != nil {
		return fmt.Errorf("auto-standby recheck: %w", err)
	}
	for _, cn := range conns {
		if cn.Dst != ip || !f.qualifies(cn) {
			continue
		}
		if cn.Active || !seen[cn.key()] {
			return ErrBusy
		}
	}
	return nil
}

// Hold blocks id's standby until until (a later hold replaces an earlier
// one; an earlier one is ignored) and restarts its countdown. It returns
// the hold in effect.
func (c *Controller) Hold(id string, until time.Time) (time.Time, error) {
	until = until.UTC().Truncate(time.Millisecond)
	cur, err := c.holds.extend(id, until)
	if err != nil {
		return time.Time{}, err
	}
	c.cfg.Metrics.AutoStandbyHold()
	c.mu.Lock()
	if t := c.tracks[id]; t != nil && !t.requested {
		now := c.cfg.Clock.Now()
		t.lastSeen = now
		if !t.idleSince.IsZero() {
			t.idleSince = now
		}
	}
	c.mu.Unlock()
	return cur, nil
}

// Status computes id's diagnostic status from s (a fresh snapshot).
func (c *Controller) Status(s Snapshot) Status {
	now := c.cfg.Clock.Now()
	st := Status{Supported: true, Configured: !s.Policy.IsZero(), Enabled: s.Policy.Enabled, TrackingMode: c.cfg.Observer.Mode()}
	if h, ok := c.holds.get(s.ID); ok && now.Before(h) {
		st.HoldUntil = &h
	}
	if st.Configured {
		d := s.Policy.Timeout()
		st.IdleTimeout = &d
	}
	switch {
	case !st.Configured:
		st.Status, st.Reason = StatusDisabled, ReasonPolicyMissing
		return st
	case !s.Policy.Enabled:
		st.Status, st.Reason = StatusDisabled, ReasonPolicyDisabled
		return st
	case s.NetworkDisabled:
		st.Status, st.Reason = StatusIneligible, ReasonNetworkDisabled
		return st
	case s.State != state.Running:
		st.Status, st.Reason = StatusIneligible, ReasonInstanceNotRunning
		return st
	case s.GuestIP == "":
		st.Status, st.Reason = StatusIneligible, ReasonMissingIP
		return st
	}
	st.Eligible = true
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tracks[s.ID]
	if t == nil || t.snap.State != state.Running {
		// Not observed yet (just started, or the controller has not caught
		// up): active until the first poll says otherwise.
		st.Status, st.Reason = StatusActive, ReasonIdleTimeoutNotElapsed
		return st
	}
	st.ActiveInboundConnections = t.active
	if !t.lastSeen.IsZero() {
		ls := t.lastSeen
		st.LastInboundActivityAt = &ls
	}
	switch {
	case t.requested:
		st.Status, st.Reason = StatusStandbyRequested, ReasonReadyForStandby
	case t.err != "":
		st.Status, st.Reason, st.Error = StatusError, ReasonObserverError, t.err
	case t.active > 0:
		st.Status, st.Reason = StatusActive, ReasonActiveInboundConnections
	case t.idleSince.IsZero():
		st.Status, st.Reason = StatusActive, ReasonIdleTimeoutNotElapsed
	default:
		is := t.idleSince
		next := c.nextStandby(s.ID, t)
		rem := max(next.Sub(now), 0)
		st.IdleSince, st.NextStandbyAt, st.CountdownRemaining = &is, &next, &rem
		if rem > 0 {
			st.Status, st.Reason = StatusIdleCountdown, ReasonIdleTimeoutNotElapsed
		} else {
			st.Status, st.Reason = StatusReadyForStandby, ReasonReadyForStandby
		}
	}
	return st
}

// ErrInStandby: a hold was asked for an instance on standby.
var ErrInStandby = errors.New("instance is on standby")

// InstanceStatus is the status of instance ref (ID or name).
func (c *Controller) InstanceStatus(ctx context.Context, ref string) (Status, error) {
	s, err := c.cfg.Instances.AutoStandbySnapshot(ctx, ref)
	if err != nil {
		return Status{}, err
	}
	return c.Status(s), nil
}

// HoldInstance holds instance ref until until, or for d from now when until
// is zero, or for the policy's idle timeout when both are zero. It returns
// the status with the hold in effect; ErrInStandby for an instance on
// standby.
func (c *Controller) HoldInstance(ctx context.Context, ref string, until time.Time, d time.Duration) (Status, error) {
	s, err := c.cfg.Instances.AutoStandbySnapshot(ctx, ref)
	if err != nil {
		return Status{}, err
	}
	if s.State == state.Standby {
		return Status{}, ErrInStandby
	}
	if until.IsZero() {
		if d <= 0 {
			d = s.Policy.Timeout()
		}
		until = c.cfg.Clock.Now().Add(d)
	}
	if _, err := c.Hold(s.ID, until); err != nil {
		return Status{}, err
	}
	return c.Status(s), nil
}
