package instances

// Hooks for the expiry controller (package expiry): the deadline lives in
// Metadata.ExpiresAt; the controller reads it and deletes through
// DeleteExpired, which re-checks it under the operation lock.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"hypeman/internal/expiry"
)

// applyExpiry applies an update's expiry change (caller holds e.mu). An
// instance already past its deadline cannot be updated at all (409): it is
// being deleted.
func applyExpiry(meta *Metadata, p UpdateParams) error {
	if meta.ExpiresAt != nil && !p.Now.IsZero() && !meta.ExpiresAt.After(p.Now) {
		return fmt.Errorf("%w at %s and is being deleted; create a new instance instead", expiry.ErrExpired, meta.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if p.Expiry.Set {
		meta.ExpiresAt = p.Expiry.At
	}
	return nil
}

// ListExpiring implements expiry.Instances.
func (m *Manager) ListExpiring(ctx context.Context) ([]expiry.Item, error) {
	var out []expiry.Item
	for _, e := range m.allEntries() {
		e.mu.Lock()
		if !e.deleted && e.meta.ExpiresAt != nil {
			out = append(out, expiry.Item{ID: e.meta.ID, At: *e.meta.ExpiresAt})
		}
		e.mu.Unlock()
	}
	return out, nil
}

// ExpiryOf implements expiry.Instances.
func (m *Manager) ExpiryOf(ctx context.Context, id string) (time.Time, bool, error) {
	e, err := m.resolve(id)
	if err != nil {
		return time.Time{}, false, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.deleted {
		return time.Time{}, false, ErrNotFound
	}
	if e.meta.ExpiresAt == nil {
		return time.Time{}, false, nil
	}
	return *e.meta.ExpiresAt, true, nil
}

// DeleteExpired implements expiry.Instances: it deletes id, reason
// "expired", only if its persisted deadline is at or before now when the
// operation lock is held.
func (m *Manager) DeleteExpired(ctx context.Context, id string, now time.Time) (bool, error) {
	done, err := m.deleteIf(ctx, id, "expired", func(meta Metadata) bool {
		return meta.ExpiresAt != nil && !meta.ExpiresAt.After(now)
	})
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return done, err
}
