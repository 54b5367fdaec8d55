package resources

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// ErrInvalid is wrapped by reclaim request errors (API 400).
var ErrInvalid = errors.New("invalid request")

// Reclaim limits.
const (
	DefaultHoldFor = 5 * time.Minute // upstream's default
	MaxHoldFor     = 24 * time.Hour
	// reclaimStep rounds what a guest is asked to give back (the balloon
	// works in pages; whole MiB keep the numbers readable).
	reclaimStep = 1 << 20
)

// Reclaim action statuses.
const (
	StatusPlanned   = "planned"   // dry run
	StatusApplied   = "applied"   // the guest reached its target
	StatusPartial   = "partial"   // it moved, but not all the way in time
	StatusUnchanged = "unchanged" // nothing asked of it
	StatusError     = "error"
)

// BalloonGuest is a running guest whose memory a balloon can reclaim (an
// instance created with hotplug_size).
type BalloonGuest struct {
	InstanceID   string
	InstanceName string
	Hypervisor   string
	// AssignedBytes is the memory the VM is built with (size +
	// hotplug_size); FloorBytes its base size, never reclaimed.
	AssignedBytes int64
	FloorBytes    int64
}

// Guests is what reclaim needs from the instance manager.
type Guests interface {
	BalloonGuests(ctx context.Context) ([]BalloonGuest, error)
	// GuestMemory is the guest RAM the balloon leaves it, in bytes.
	GuestMemory(ctx context.Context, id string) (int64, error)
	SetGuestMemoryTarget(ctx context.Context, id string, target int64) error
}

// ReclaimRequest is POST /resources/memory/reclaim.
type ReclaimRequest struct {
	ReclaimBytes int64
	HoldFor      time.Duration // 0 = DefaultHoldFor
	DryRun       bool
	Reason       string
}

// ReclaimAction is one guest's part of a reclaim.
type ReclaimAction struct {
	InstanceID, InstanceName, Hypervisor string
	AssignedMemoryBytes                  int64
	ProtectedFloorBytes                  int64
	// PreviousTargetBytes is the guest's memory before this reclaim (the
	// target of an earlier hold counts as not reclaimed: a new reclaim
	// replaces the hold); PlannedTargetBytes what the plan gives it;
	// TargetBytes what it was set to (= previous on a dry run).
	PreviousTargetBytes int64
	PlannedTargetBytes  int64
	TargetBytes         int64
	// AppliedBytes is what the guest actually gave back: previous target
	// minus the memory it had when the wait ended.
	AppliedBytes int64
	Status       string
	Error        string
}

// ReclaimResult is the reclaim response.
type ReclaimResult struct {
	RequestedBytes, PlannedBytes, AppliedBytes int64
	HoldUntil                                  *time.Time
	HostAvailableBytes                         int64
	// Pressure is "pressure" when MemAvailable is below a tenth of
	// MemTotal, else "healthy".
	Pressure string
	Actions  []ReclaimAction
}

// ReclaimerConfig configures a Reclaimer.
type ReclaimerConfig struct {
	Guests Guests
	// HostMemory returns MemTotal and MemAvailable (nil = /proc/meminfo).
	HostMemory func() (total, available int64, err error)
	// AfterFunc schedules the end of a hold (nil = time.AfterFunc).
	AfterFunc func(d time.Duration, f func()) (stop func() bool)
	// Now is the clock (nil = time.Now).
	Now func() time.Time
	// Settle bounds the wait for guests to reach their targets (default
	// 15s) and Poll is how often it looks (default 200ms).
	Settle, Poll time.Duration
	Logger       *slog.Logger
}

// Reclaimer runs memory reclaims and owns the current hold.
type Reclaimer struct {
	cfg ReclaimerConfig
	log *slog.Logger

	mu   sync.Mutex // one reclaim at a time; guards hold
	hold *hold
}

// hold is the current manual reclaim: the targets to give back when it ends.
type hold struct {
	restore map[string]int64 // instance id → target before the hold
	until   time.Time
	stop    func() bool
}

// NewReclaimer makes a Reclaimer.
func NewReclaimer(cfg ReclaimerConfig) (*Reclaimer, error) {
	if cfg.Guests == nil {
		return nil, errors.New("resources: reclaimer needs Guests")
	}
	if cfg.HostMemory == nil {
		cfg.HostMemory = func() (int64, int64, error) {
			t, err := memInfoField("MemTotal")
			if err != nil {
				return 0, 0, err
			}
			a, err := HostMemAvailable()
			return t, a, err
		}
	}
	if cfg.AfterFunc == nil {
		cfg.AfterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 15 * time.Second
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 200 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Reclaimer{cfg: cfg, log: cfg.Logger}, nil
}

// ParseHoldFor validates hold_for: a Go duration, > 0 and at most
// MaxHoldFor; "" = DefaultHoldFor.
func ParseHoldFor(s string) (time.Duration, error) {
	if s == "" {
		return DefaultHoldFor, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%w: hold_for %q is not a duration (examples: 30s, 5m, 1h)", ErrInvalid, s)
	}
	if d <= 0 || d > MaxHoldFor {
		return 0, fmt.Errorf("%w: hold_for %s is out of range (more than 0, at most %s)", ErrInvalid, s, MaxHoldFor)
	}
	return d, nil
}

// Plan splits want over guests, biggest reclaimable first: each gives what
// it can down to its floor until want is met (so the fewest guests are
// disturbed). Amounts are whole MiB.
func Plan(want int64, guests []BalloonGuest, base map[string]int64) (planned int64, targets map[string]int64) {
	order := slices.Clone(guests)
	room := func(g BalloonGuest) int64 { return max(base[g.InstanceID]-g.FloorBytes, 0) / reclaimStep * reclaimStep }
	slices.SortFunc(order, func(a, b BalloonGuest) int {
		return cmp.Or(cmp.Compare(room(b), room(a)), cmp.Compare(a.InstanceName, b.InstanceName))
	})
	targets = map[string]int64{}
	for _, g := range order {
		take := min(room(g), (want-planned+reclaimStep-1)/reclaimStep*reclaimStep)
		take = max(take, 0)
		targets[g.InstanceID] = base[g.InstanceID] - take
		planned += take
	}
	return planned, targets
}

// Reclaim plans and (unless DryRun) applies a reclaim, replacing the
// current hold: guests of the old hold that the new plan leaves alone get
// their memory back at once.
func (r *Reclaimer) Reclaim(ctx context.Context, req ReclaimRequest) (*ReclaimResult, error) {
	if req.ReclaimBytes < 0 {
		return nil, fmt.Errorf("%w: reclaim_bytes must be >= 0", ErrInvalid)
	}
	if req.HoldFor == 0 {
		req.HoldFor = DefaultHoldFor
	}
	if req.HoldFor < 0 || req.HoldFor > MaxHoldFor {
		return nil, fmt.Errorf("%w: hold_for %s is out of range (more than 0, at most %s)", ErrInvalid, req.HoldFor, MaxHoldFor)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	guests, err := r.cfg.Guests.BalloonGuests(ctx)
	if err != nil {
		return nil, fmt.Errorf("reclaim: list guests: %w", err)
	}
	base := map[string]int64{}
	current := map[string]int64{}
	var errs = map[string]error{}
	for _, g := range guests {
		cur, err := r.cfg.Guests.GuestMemory(ctx, g.InstanceID)
		if err != nil {
			errs[g.InstanceID] = err
			cur = g.FloorBytes // plan nothing for it
		}
		current[g.InstanceID] = cur
		base[g.InstanceID] = cur
		if r.hold != nil {
			if t, ok := r.hold.restore[g.InstanceID]; ok && err == nil {
				base[g.InstanceID] = t
			}
		}
	}
	planned, targets := Plan(req.ReclaimBytes, guests, base)
	res := &ReclaimResult{RequestedBytes: req.ReclaimBytes, PlannedBytes: planned}
	actions := make([]ReclaimAction, len(guests))
	for i, g := range guests {
		a := ReclaimAction{InstanceID: g.InstanceID, InstanceName: g.InstanceName, Hypervisor: g.Hypervisor,
			AssignedMemoryBytes: g.AssignedBytes, ProtectedFloorBytes: g.FloorBytes,
			PreviousTargetBytes: base[g.InstanceID], PlannedTargetBytes: targets[g.InstanceID], TargetBytes: base[g.InstanceID]}
		switch {
		case errs[g.InstanceID] != nil:
			a.Status, a.Error = StatusError, errs[g.InstanceID].Error()
		case req.DryRun && a.PlannedTargetBytes != a.PreviousTargetBytes:
			a.Status = StatusPlanned
		case req.DryRun:
			a.Status = StatusUnchanged
		}
		actions[i] = a
	}
	if !req.DryRun {
		r.apply(ctx, actions, current, req)
	}
	for _, a := range actions {
		res.AppliedBytes += a.AppliedBytes
	}
	if !req.DryRun && r.hold != nil {
		u := r.hold.until
		res.HoldUntil = &u
	}
	if _, avail, err := r.cfg.HostMemory(); err == nil {
		res.HostAvailableBytes = avail
	}
	res.Pressure = r.pressure()
	slices.SortFunc(actions, func(a, b ReclaimAction) int { return cmp.Compare(a.InstanceName, b.InstanceName) })
	res.Actions = actions
	return res, nil
}

// apply sets the targets, replaces the hold, and waits (bounded) for the
// guests to get there, filling in each action's outcome (r.mu held).
func (r *Reclaimer) apply(ctx context.Context, actions []ReclaimAction, current map[string]int64, req ReclaimRequest) {
	old := r.hold
	if old != nil {
		old.stop()
		r.hold = nil
	}
	h := &hold{restore: map[string]int64{}, until: r.cfg.Now().Add(req.HoldFor)}
	for i := range actions {
		a := &actions[i]
		if a.Status == StatusError {
			continue
		}
		if a.PlannedTargetBytes == a.PreviousTargetBytes && current[a.InstanceID] == a.PreviousTargetBytes {
			a.Status = StatusUnchanged
			continue
		}
		if err := r.cfg.Guests.SetGuestMemoryTarget(ctx, a.InstanceID, a.PlannedTargetBytes); err != nil {
			a.Status, a.Error = StatusError, err.Error()
			continue
		}
		a.TargetBytes = a.PlannedTargetBytes
		if a.PlannedTargetBytes < a.PreviousTargetBytes {
			h.restore[a.InstanceID] = a.PreviousTargetBytes
		}
	}
	// Guests of the old hold that the new plan does not hold again got
	// their previous target back above (planned == previous).
	if len(h.restore) > 0 {
		h.stop = r.cfg.AfterFunc(req.HoldFor, func() { r.expire(h) })
		r.hold = h
	}
	r.log.Info("memory reclaim", "requested", req.ReclaimBytes, "hold_for", req.HoldFor, "reason", req.Reason, "guests", len(h.restore))
	r.settle(ctx, actions)
}

// settle waits until every changed guest reached its target or Settle
// passed, then records what each gave back.
func (r *Reclaimer) settle(ctx context.Context, actions []ReclaimAction) {
	deadline := r.cfg.Now().Add(r.cfg.Settle)
	pending := func() []int {
		var out []int
		for i := range actions {
			a := &actions[i]
			if a.Status != "" {
				continue
			}
			cur, err := r.cfg.Guests.GuestMemory(ctx, a.InstanceID)
			if err != nil {
				a.Status, a.Error = StatusError, err.Error()
				continue
			}
			a.AppliedBytes = max(a.PreviousTargetBytes-cur, 0)
			if abs(cur-a.TargetBytes) <= reclaimStep {
				a.Status = StatusApplied
				continue
			}
			out = append(out, i)
		}
		return out
	}
	for {
		left := pending()
		if len(left) == 0 {
			return
		}
		if !r.cfg.Now().Before(deadline) || ctx.Err() != nil {
			for _, i := range left {
				actions[i].Status = StatusPartial
			}
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(r.cfg.Poll):
		}
	}
}

func abs(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}

// expire ends hold h (if it is still the current one): every guest gets
// its memory back.
func (r *Reclaimer) expire(h *hold) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hold != h {
		return
	}
	r.hold = nil
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for id, target := range h.restore {
		if err := r.cfg.Guests.SetGuestMemoryTarget(ctx, id, target); err != nil {
			// Stopped or deleted since: nothing to give back.
			r.log.Info("memory reclaim hold ended; guest not restored", "id", id, "err", err)
		}
	}
	r.log.Info("memory reclaim hold ended", "guests", len(h.restore))
}

// HoldUntil is when the current hold ends (zero = none).
func (r *Reclaimer) HoldUntil() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hold == nil {
		return time.Time{}
	}
	return r.hold.until
}

// Close cancels the hold's timer; guests keep their current targets (holds
// do not survive the daemon).
func (r *Reclaimer) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hold != nil {
		r.hold.stop()
		r.hold = nil
	}
}

func (r *Reclaimer) pressure() string {
	total, avail, err := r.cfg.HostMemory()
	if err == nil && total > 0 && avail < total/10 {
		return "pressure"
	}
	return "healthy"
}
