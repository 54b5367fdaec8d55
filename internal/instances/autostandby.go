package instances

import (
	"context"
	"errors"
	"fmt"
	"time"

	"hypeman/internal/autostandby"
	"hypeman/internal/instances/state"
)

// What the auto-standby controller (package autostandby) needs from the
// manager: the policy is persisted in Metadata.AutoStandby; the controller
// reads instances through AutoStandbySnapshot / ListAutoStandby and takes a
// standby through StandbyIfIdle. Nothing else here knows about idleness.

// validateAutoStandby checks a policy from create or update.
func validateAutoStandby(p *autostandby.Policy) error {
	if p == nil {
		return nil
	}
	return p.Validate()
}

// autoStandbyView fills the API field from metadata.
func autoStandbyView(inst *Instance, meta Metadata) {
	if !meta.AutoStandby.IsZero() {
		p := meta.AutoStandby
		inst.AutoStandby = &p
	}
}

func (m *Manager) autoStandbySnapshot(meta Metadata, st state.State) autostandby.Snapshot {
	s := autostandby.Snapshot{ID: meta.ID, State: st, Policy: meta.AutoStandby, NetworkDisabled: !m.networkEnabled(meta)}
	if !s.NetworkDisabled {
		if l, ok := m.cfg.Network.Lease(meta.ID); ok {
			s.GuestIP = l.IP
		}
	}
	return s
}

// AutoStandbySnapshot implements autostandby.Instances (no op lock).
func (m *Manager) AutoStandbySnapshot(ctx context.Context, id string) (autostandby.Snapshot, error) {
	return viewOne(ctx, m, id, m.autoStandbySnapshot)
}

// ListAutoStandby implements autostandby.Instances.
func (m *Manager) ListAutoStandby(ctx context.Context) ([]autostandby.Snapshot, error) {
	return viewAll(ctx, m, func(meta Metadata) bool { return !meta.AutoStandby.IsZero() }, m.autoStandbySnapshot), nil
}

// StandbyIfIdle implements autostandby.Instances: under the operation lock,
// a Running instance is paused, check runs while the guest cannot answer,
// and the VM is either resumed (check failed: a connection appeared) or
// saved like API standby with the instance's default compression.
func (m *Manager) StandbyIfIdle(ctx context.Context, id string, check func(context.Context) error) (err error) {
	defer m.observe("auto_standby", time.Now(), &err)
	e, lv, from, err := m.lockLive(ctx, id, ActionStandby)
	if err != nil {
		return err
	}
	defer e.op.Unlock()
	if from != state.Running {
		return &TransitionError{Action: ActionStandby, State: from, Allowed: Allowed(from)}
	}
	resume := func(why string) error {
		if rerr := lv.vm.Resume(context.WithoutCancel(ctx)); rerr != nil {
			return fmt.Errorf("auto-standby: resume: %w", rerr)
		}
		m.publish(id, state.Paused, from, why)
		return nil
	}
	if err := lv.vm.Pause(ctx); err != nil {
		return fmt.Errorf("auto-standby: pause: %w", err)
	}
	m.publish(id, from, state.Paused, "auto-standby: paused to re-check connections")
	if err := check(ctx); err != nil {
		return errors.Join(err, resume("auto-standby: connection seen while paused; resumed"))
	}
	e.mu.Lock()
	policy := e.meta.SnapshotPolicy
	e.mu.Unlock()
	comp, delay := m.standbyPlan(StandbyParams{}, policy)
	if err := m.standbyLocked(ctx, e, lv, state.Paused, comp, delay); err != nil {
		return errors.Join(err, resume("auto-standby failed: resumed"))
	}
	m.logf(id, "auto-standby: idle, put on standby")
	return nil
}
