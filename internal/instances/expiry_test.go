package instances

import (
	"context"
	"errors"
	"testing"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/expiry"
	"hypeman/internal/health"
)

// The manager side of expiry: the deadline is persisted, PATCH moves or
// clears it, an expired instance refuses updates (409), and DeleteExpired
// re-checks the persisted deadline under the lock and acts once.
func TestExpiryPersistUpdateAndDeleteOnce(t *testing.T) {
	root := t.TempDir()
	hv := newFakeHV()
	m, _ := newTestManager(t, root, hv)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	at := now.Add(time.Hour)
	in, err := m.Create(ctx, CreateParams{Name: "web", Image: "img", ExpiresAt: &at})
	if err != nil {
		t.Fatal(err)
	}
	if in.ExpiresAt == nil || !in.ExpiresAt.Equal(at) {
		t.Fatalf("view expires_at %v", in.ExpiresAt)
	}
	// Not due: DeleteExpired refuses.
	if done, err := m.DeleteExpired(ctx, in.ID, now); done || err != nil {
		t.Fatalf("deleted before the deadline: %v %v", done, err)
	}
	// PATCH extends it; the persisted deadline survives a restart.
	later := now.Add(2 * time.Hour)
	if _, err := m.Update(ctx, "web", UpdateParams{Expiry: expiry.Change{Set: true, At: &later}, Now: now}); err != nil {
		t.Fatal(err)
	}
	m.Close()
	m2, bus := newTestManager(t, root, hv)
	items, _ := m2.ListExpiring(ctx)
	if len(items) != 1 || items[0].ID != in.ID || !items[0].At.Equal(later) {
		t.Fatalf("after restart: %+v", items)
	}
	// A controller that read the old deadline (at) acts at at: refused,
	// the persisted one (later) wins.
	if done, _ := m2.DeleteExpired(ctx, in.ID, at); done {
		t.Fatal("deleted at a deadline a PATCH had moved")
	}
	// Past the deadline an update is refused with ErrExpired (409).
	if _, err := m2.Update(ctx, "web", UpdateParams{Expiry: expiry.Change{Set: true}, Now: later.Add(time.Second)}); !errors.Is(err, expiry.ErrExpired) {
		t.Fatalf("update of an expired instance: %v", err)
	}
	if _, err := m2.Update(ctx, "web", UpdateParams{HealthCheck: &health.Check{}, Now: later.Add(time.Second)}); !errors.Is(err, expiry.ErrExpired) {
		t.Fatalf("policy update of an expired instance: %v", err)
	}
	sub := bus.Subscribe(events.SubscribeOptions{InstanceID: in.ID})
	defer sub.Close()
	if done, err := m2.DeleteExpired(ctx, in.ID, later); !done || err != nil {
		t.Fatalf("due delete: %v %v", done, err)
	}
	for deleted := false; !deleted; {
		select {
		case ev := <-sub.C():
			if ev.Type == events.TypeDeleted {
				if ev.Reason != "expired" {
					t.Fatalf("deleted event %+v, want reason expired", ev)
				}
				deleted = true
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no deleted event")
		}
	}
	// Second action (a duplicate wake-up, or a restarted daemon): nothing.
	if done, err := m2.DeleteExpired(ctx, in.ID, later); done || err != nil {
		t.Fatalf("second delete: %v %v", done, err)
	}
	if _, err := m2.Get(ctx, in.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after expiry: %v", err)
	}
	// ttl "0s" clears.
	_, err = m2.Create(ctx, CreateParams{Name: "db", Image: "img", ExpiresAt: &at})
	if err != nil {
		t.Fatal(err)
	}
	got, err := m2.Update(ctx, "db", UpdateParams{Expiry: expiry.Change{Set: true}, Now: now})
	if err != nil || got.ExpiresAt != nil {
		t.Fatalf("clear: %v %+v", err, got.ExpiresAt)
	}
}
