package instances

import (
	"context"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/instances/state"
)

// SetRestartPending installs the restart policy's predicate: while it
// reports true for an instance, WaitForState does not treat Stopped (or
// another terminal state) as final. The restart controller is built after the
// manager (it drives the manager), hence a setter rather than a Config field.
func (m *Manager) SetRestartPending(fn func(id string) bool) {
	if fn == nil {
		m.restartPending.Store(nil)
		return
	}
	m.restartPending.Store(&fn)
}

// WaitForState blocks until the instance is in one of targets, reaches a
// state it will not leave by itself, is deleted (ErrNotFound), ctx ends, or
// timeout passes (see events.Wait for the exact contract).
func (m *Manager) WaitForState(ctx context.Context, ref string, targets []state.State, timeout time.Duration) (events.WaitResult, error) {
	e, err := m.resolve(ref)
	if err != nil {
		return events.WaitResult{}, err
	}
	e.mu.Lock()
	id := e.meta.ID
	e.mu.Unlock()
	var pending func() bool
	if fn := m.restartPending.Load(); fn != nil {
		pending = func() bool { return (*fn)(id) }
	}
	return events.Wait(ctx, events.WaitParams{
		Bus:        m.cfg.Events,
		InstanceID: id,
		Targets:    targets,
		Timeout:    timeout,
		Get: func(ctx context.Context) (state.State, *string, error) {
			in, err := m.view(ctx, e)
			if err != nil {
				return "", nil, err
			}
			return in.State, in.StateError, nil
		},
		RestartPending: pending,
		NotFound:       ErrNotFound,
		Logger:         m.log,
	})
}
