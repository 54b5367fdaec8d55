package instances

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"hypeman/internal/autostandby"
	"hypeman/internal/expiry"
	"hypeman/internal/health"
	"hypeman/internal/instances/state"
	"hypeman/internal/restart"
)

// Exit kinds recorded in Metadata.ExitKind (restart.ExitInfo's cases).
const (
	exitStoppedByHypeman = "stopped_by_hypeman"
	exitLaunchFailed     = "launch_failed"
	exitCode             = "code"
	exitVMCrashed        = "vm_crashed"
)

// validatePolicies checks a restart policy and a health check; the errors
// name the field (restart.FieldError / health.FieldError wrap ErrInvalid
// of their package; they are mapped to 400).
func validatePolicies(p *restart.Policy, c *health.Check) error {
	if p != nil {
		if err := p.Validate(); err != nil {
			return err
		}
	}
	if c != nil && !c.IsZero() {
		if err := c.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// policyView fills the API fields from metadata.
func policyView(inst *Instance, meta Metadata) {
	if !meta.RestartPolicy.IsZero() {
		p := meta.RestartPolicy
		inst.RestartPolicy = &p
	}
	if !meta.RestartStatus.IsZero() {
		s := meta.RestartStatus
		inst.RestartStatus = &s
	}
	if !meta.HealthCheck.IsZero() {
		c, s := meta.HealthCheck, meta.HealthStatus
		inst.HealthCheck, inst.HealthStatus = &c, &s
	} else if !meta.HealthStatus.IsZero() {
		s := meta.HealthStatus
		inst.HealthStatus = &s
	}
	autoStandbyView(inst, meta)
}

// UpdateParams is a PATCH /instances/{id} request: nil fields are left
// unchanged; a zero HealthCheck removes the check, a zero-policy
// RestartPolicy ({"policy":"never"}) turns restarts off.
type UpdateParams struct {
	RestartPolicy *restart.Policy
	HealthCheck   *health.Check
	AutoStandby   *autostandby.Policy // see autostandby.go
	// Expiry, when Set, replaces the deadline (expiry.go); Now is the
	// caller's clock, for refusing an update of an expired instance.
	Expiry expiry.Change
	Now    time.Time
}

// Update changes an instance's restart policy and/or health check. Changing
// the policy resets the restart counters but keeps a manual stop.
func (m *Manager) Update(ctx context.Context, ref string, p UpdateParams) (*Instance, error) {
	if err := validatePolicies(p.RestartPolicy, p.HealthCheck); err != nil {
		return nil, err
	}
	if err := validateAutoStandby(p.AutoStandby); err != nil {
		return nil, err
	}
	e, err := m.resolve(ref)
	if err != nil {
		return nil, err
	}
	if err := m.refuseBroken(e, "update"); err != nil {
		return nil, err
	}
	st := m.currentState(ctx, e)
	e.mu.Lock()
	if err := applyExpiry(&e.meta, p); err != nil {
		e.mu.Unlock()
		return nil, err
	}
	if p.RestartPolicy != nil {
		old := e.meta.RestartPolicy
		e.meta.RestartStatus = e.meta.RestartStatus.ForPolicyChange(old, *p.RestartPolicy)
		e.meta.RestartPolicy = *p.RestartPolicy
	}
	if p.HealthCheck != nil {
		old := e.meta.HealthCheck
		e.meta.HealthStatus = health.ForCheckChange(old, *p.HealthCheck, e.meta.HealthStatus, st == state.Running)
		e.meta.HealthCheck = *p.HealthCheck
	}
	if p.AutoStandby != nil {
		e.meta.AutoStandby = *p.AutoStandby
	}
	err = m.persist(e)
	id := e.meta.ID
	e.mu.Unlock()
	if err != nil {
		return nil, err
	}
	m.logf(id, "policies updated")
	if fn := m.policyChanged.Load(); fn != nil {
		(*fn)(id)
	}
	return m.view(ctx, e)
}

// SetPolicyChangedHook is called after Update (the controllers refresh the
// instance at once instead of at their next reconcile).
func (m *Manager) SetPolicyChangedHook(fn func(id string)) {
	if fn == nil {
		m.policyChanged.Store(nil)
		return
	}
	m.policyChanged.Store(&fn)
}

// --- restart.Instances ---

func exitInfo(meta Metadata) restart.ExitInfo {
	ei := restart.ExitInfo{}
	if meta.ExitMessage != nil {
		ei.Message = *meta.ExitMessage
	}
	switch meta.ExitKind {
	case exitStoppedByHypeman:
		ei.StoppedByHypeman = true
	case exitLaunchFailed:
		ei.LaunchFailed = true
	case exitCode:
		ei.Code = meta.ExitCode
	case exitVMCrashed:
		ei.VMCrashed = true
	default:
		if meta.ExitCode != nil {
			ei.Code = meta.ExitCode
		} else if meta.StoppedAt != nil {
			ei.VMCrashed = true
		}
	}
	return ei
}

func restartSnapshot(meta Metadata, st state.State) restart.Snapshot {
	s := restart.Snapshot{ID: meta.ID, State: st, Policy: meta.RestartPolicy, Status: meta.RestartStatus, Exit: exitInfo(meta)}
	if meta.StartedAt != nil {
		s.StartedAt = *meta.StartedAt
	}
	if meta.StoppedAt != nil {
		s.StoppedAt = *meta.StoppedAt
	}
	return s
}

// snapshotState derives the state without the op lock.
func (m *Manager) snapshotState(ctx context.Context, e *entry) (Metadata, state.State, error) {
	e.mu.Lock()
	if e.deleted {
		e.mu.Unlock()
		return Metadata{}, "", ErrNotFound
	}
	e.mu.Unlock()
	meta, _, st, _ := m.read(ctx, e)
	return meta, st, nil
}

// RestartSnapshot implements restart.Instances (no op lock).
func (m *Manager) RestartSnapshot(ctx context.Context, id string) (restart.Snapshot, error) {
	return viewOne(ctx, m, id, restartSnapshot)
}

// ListRestartable implements restart.Instances.
func (m *Manager) ListRestartable(ctx context.Context) ([]restart.Snapshot, error) {
	return viewAll(ctx, m, func(meta Metadata) bool { return !meta.RestartPolicy.IsZero() }, restartSnapshot), nil
}

// viewOne maps one instance (state derived without the op lock) to a
// controller's view of it.
func viewOne[T any](ctx context.Context, m *Manager, id string, conv func(Metadata, state.State) T) (T, error) {
	var zero T
	e, err := m.resolve(id)
	if err != nil {
		return zero, err
	}
	meta, st, err := m.snapshotState(ctx, e)
	if err != nil {
		return zero, err
	}
	return conv(meta, st), nil
}

// viewAll maps every instance that keep selects.
func viewAll[T any](ctx context.Context, m *Manager, keep func(Metadata) bool, conv func(Metadata, state.State) T) []T {
	var out []T
	for _, e := range m.allEntries() {
		meta, st, err := m.snapshotState(ctx, e)
		if err == nil && keep(meta) {
			out = append(out, conv(meta, st))
		}
	}
	return out
}

// UpdateRestartStatus implements restart.Instances: the callback's change
// is persisted atomically with every other status write (under e.mu).
func (m *Manager) UpdateRestartStatus(ctx context.Context, id string, fn func(restart.Snapshot, *restart.Status)) error {
	return m.mutateMeta(ctx, id, func(meta *Metadata, st state.State) bool {
		cp := meta.RestartStatus
		fn(restartSnapshot(*meta, st), &cp)
		if reflect.DeepEqual(cp, meta.RestartStatus) {
			return false
		}
		meta.RestartStatus = cp
		return true
	})
}

// mutateMeta derives id's state (without the op lock), then runs fn on its
// metadata under e.mu and persists when fn reports a change.
func (m *Manager) mutateMeta(ctx context.Context, id string, fn func(meta *Metadata, st state.State) bool) error {
	e, err := m.resolve(id)
	if err != nil {
		return err
	}
	_, st, err := m.snapshotState(ctx, e)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.deleted {
		return ErrNotFound
	}
	if !fn(&e.meta, st) {
		return nil
	}
	return m.persist(e)
}

// checkRestart runs the restart controller's check on a copy of the status
// under e.mu and persists a change (caller holds e.op). It returns the
// state and whether check approved the action.
func (m *Manager) checkRestart(ctx context.Context, e *entry, check func(restart.Snapshot, *restart.Status) bool) (state.State, bool, error) {
	st := m.currentState(ctx, e)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.deleted {
		return st, false, ErrNotFound
	}
	cp := e.meta.RestartStatus
	ok := check(restartSnapshot(e.meta, st), &cp)
	if reflect.DeepEqual(cp, e.meta.RestartStatus) {
		return st, ok, nil
	}
	e.meta.RestartStatus = cp
	return st, ok, m.persist(e)
}

// StartForRestart implements restart.Instances: check and start share the
// instance's op lock, so a manual stop after the controller's decision wins.
func (m *Manager) StartForRestart(ctx context.Context, id string, check func(restart.Snapshot, *restart.Status) bool) error {
	e, err := m.resolve(id)
	if err != nil {
		return err
	}
	e.op.Lock()
	defer e.op.Unlock()
	st, ok, err := m.checkRestart(ctx, e, check)
	if err != nil || !ok {
		return err
	}
	if err := checkTransition(ActionStart, st); err != nil {
		return err
	}
	e.mu.Lock()
	image := e.meta.Image
	e.mu.Unlock()
	img, err := m.cfg.Images.Resolve(ctx, image)
	if err != nil {
		m.recordLaunchFailure(e, err)
		return fmt.Errorf("restart: %w", err)
	}
	m.logf(id, "restarting (restart policy)")
	return m.boot(ctx, e, img)
}

// StopForRestart implements restart.Instances (health restarts): a graceful
// stop recorded as stopped by hypeman, without a manual-stop block.
func (m *Manager) StopForRestart(ctx context.Context, id string, check func(restart.Snapshot, *restart.Status) bool) error {
	e, err := m.resolve(id)
	if err != nil {
		return err
	}
	e.op.Lock()
	defer e.op.Unlock()
	st, ok, err := m.checkRestart(ctx, e, check)
	if err != nil || !ok {
		return err
	}
	if err := checkTransition(ActionStop, st); err != nil {
		return err
	}
	m.stopLocked(ctx, e, "health check failed")
	return nil
}

// recordLaunchFailure marks a boot that never got a VM running.
func (m *Manager) recordLaunchFailure(e *entry, cause error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := time.Now().UTC()
	msg := "launch failed: " + cause.Error()
	e.meta.StoppedAt, e.meta.ExitMessage, e.meta.ExitCode = &t, &msg, nil
	e.meta.ExitKind = exitLaunchFailed
	_ = m.persist(e)
}

// --- health.Instances ---

func healthTarget(meta Metadata, st state.State) health.Target {
	t := health.Target{ID: meta.ID, State: st, Check: meta.HealthCheck, Status: meta.HealthStatus}
	if meta.StartedAt != nil {
		t.StartedAt = *meta.StartedAt
	}
	return t
}

// HealthTarget implements health.Instances (no op lock).
func (m *Manager) HealthTarget(ctx context.Context, id string) (health.Target, error) {
	return viewOne(ctx, m, id, healthTarget)
}

// ListHealthTargets implements health.Instances: instances with a check,
// or with a leftover status to clear.
func (m *Manager) ListHealthTargets(ctx context.Context) ([]health.Target, error) {
	return viewAll(ctx, m, func(meta Metadata) bool {
		return !meta.HealthCheck.IsZero() || (!meta.HealthStatus.IsZero() && meta.HealthStatus.Status != health.Disabled)
	}, healthTarget), nil
}

// UpdateHealthStatus implements health.Instances.
func (m *Manager) UpdateHealthStatus(ctx context.Context, id string, fn func(health.Target, *health.Status)) error {
	return m.mutateMeta(ctx, id, func(meta *Metadata, st state.State) bool {
		cp := meta.HealthStatus
		fn(healthTarget(*meta, st), &cp)
		if reflect.DeepEqual(cp, meta.HealthStatus) {
			return false
		}
		meta.HealthStatus = cp
		return true
	})
}

// restartPendingFor reports the restart hook's answer for id.
func (m *Manager) restartPendingFor(id string) bool {
	fn := m.restartPending.Load()
	return fn != nil && (*fn)(id)
}

// initialHealth is the status a new boot history starts with (none without a check).
func initialHealth(c health.Check) health.Status {
	if c.IsZero() {
		return health.Status{}
	}
	return health.Initial(c)
}

func (m *Manager) allEntries() []*entry {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*entry, 0, len(m.entries))
	for _, e := range m.entries {
		out = append(out, e)
	}
	return out
}
