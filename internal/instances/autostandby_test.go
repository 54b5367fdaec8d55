package instances

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"hypeman/internal/autostandby"
	"hypeman/internal/instances/state"
)

// StandbyIfIdle pauses, runs the check while paused, and either resumes
// (check failed) or saves (check passed); the policy is persisted and shown.
func TestStandbyIfIdle(t *testing.T) {
	hv := newFakeHV()
	m, _ := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	pol := autostandby.Policy{Configured: true, Enabled: true, IdleTimeout: "5s"}
	in := running(t, m, hv, CreateParams{Name: "web", AutoStandby: &pol})
	if in.AutoStandby == nil || !reflect.DeepEqual(*in.AutoStandby, pol) {
		t.Fatalf("instance view: %+v", in.AutoStandby)
	}
	if snaps, _ := m.ListAutoStandby(ctx); len(snaps) != 1 || snaps[0].State != state.Running || !snaps[0].Policy.Enabled {
		t.Fatalf("ListAutoStandby: %+v", snaps)
	}
	busy := errors.New("busy")
	var during state.State
	err := m.StandbyIfIdle(ctx, in.ID, func(ctx context.Context) error {
		during = get(t, m, in.ID).State
		return busy
	})
	if !errors.Is(err, busy) || during != state.Paused {
		t.Fatalf("busy check: err %v, state during check %s", err, during)
	}
	if st := get(t, m, in.ID).State; st != state.Running {
		t.Fatalf("after a failed check: %s, want Running (resumed)", st)
	}
	if err := m.StandbyIfIdle(ctx, in.ID, func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if g := get(t, m, in.ID); g.State != state.Standby || !g.HasSnapshot {
		t.Fatalf("after a passed check: %s", g.State)
	}
	// Not Running: refused without calling the check.
	called := false
	if err := m.StandbyIfIdle(ctx, in.ID, func(context.Context) error { called = true; return nil }); err == nil || called {
		t.Fatalf("standby of a Standby instance: err %v, check called %v", err, called)
	}
	// Update replaces the policy; a bad one names the field.
	if _, err := m.Update(ctx, in.ID, UpdateParams{AutoStandby: &autostandby.Policy{IdleTimeout: "1ms"}}); !errors.Is(err, autostandby.ErrInvalid) {
		t.Fatalf("bad policy: %v", err)
	}
	if _, err := m.Update(ctx, in.ID, UpdateParams{AutoStandby: &autostandby.Policy{}}); err != nil {
		t.Fatal(err)
	}
	if g := get(t, m, in.ID); g.AutoStandby != nil {
		t.Fatalf("policy not removed: %+v", g.AutoStandby)
	}
}

func get(t *testing.T, m *Manager, id string) *Instance {
	t.Helper()
	in, err := m.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return in
}
