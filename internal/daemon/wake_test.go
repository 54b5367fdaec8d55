package daemon

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/network/ingress"
	"hypeman/internal/resources"
)

// fakeWakeManager records calls; after a restore or start the instance is
// in `after`.
type fakeWakeManager struct {
	st     state.State
	opErr  error
	after  state.State
	called []string
}

func (f *fakeWakeManager) Get(_ context.Context, ref string) (*instances.Instance, error) {
	if ref != "app" {
		return nil, instances.ErrNotFound
	}
	return &instances.Instance{ID: "id-app", Name: "app", State: f.st}, nil
}

func (f *fakeWakeManager) Restore(context.Context, string) (*instances.Instance, error) {
	f.called = append(f.called, "restore")
	return nil, f.opErr
}

func (f *fakeWakeManager) Start(context.Context, string, instances.StartParams) (*instances.Instance, error) {
	f.called = append(f.called, "start")
	return nil, f.opErr
}

func (f *fakeWakeManager) WaitForState(_ context.Context, _ string, _ []state.State, _ time.Duration) (events.WaitResult, error) {
	f.called = append(f.called, "wait")
	r := events.WaitResult{State: f.after}
	if f.after == state.Running {
		r.Reached = state.Running
	}
	return r, nil
}

func TestIngressWakerStates(t *testing.T) {
	refused := &resources.InsufficientError{Resource: resources.Memory, Asked: 1 << 30, Free: 1 << 28, Limit: 1 << 32, Capacity: 1 << 32, Ratio: 1}
	for _, c := range []struct {
		name     string
		ref      string
		st       state.State
		stopped  bool
		opErr    error
		after    state.State
		wantFrom string
		wantErr  error
		calls    string
	}{
		{name: "standby restores", ref: "app", st: state.Standby, after: state.Running, wantFrom: "Standby", calls: "restore wait"},
		{name: "stopped without opt-in", ref: "app", st: state.Stopped, wantErr: ingress.ErrNotAsleep},
		{name: "stopped with opt-in starts", ref: "app", st: state.Stopped, stopped: true, after: state.Running, wantFrom: "Stopped", calls: "start wait"},
		{name: "running needs nothing", ref: "app", st: state.Running},
		{name: "paused is not woken", ref: "app", st: state.Paused, wantErr: ingress.ErrNotAsleep},
		{name: "template is not woken", ref: "app", st: state.Template, wantErr: ingress.ErrNotAsleep},
		{name: "unknown instance", ref: "ghost", wantErr: ingress.ErrNotAsleep},
		{name: "admission refused", ref: "app", st: state.Standby, opErr: refused, wantFrom: "Standby", wantErr: ingress.ErrWakeRefused, calls: "restore"},
		{name: "lost a race, still Running", ref: "app", st: state.Standby, after: state.Running, wantFrom: "Standby",
			opErr: &instances.TransitionError{Action: instances.ActionRestore, State: state.Running}, calls: "restore wait"},
		{name: "exits during the wake", ref: "app", st: state.Stopped, stopped: true, after: state.Stopped, wantFrom: "Stopped", wantErr: errAny, calls: "start wait"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := &fakeWakeManager{st: c.st, opErr: c.opErr, after: c.after}
			info, err := ingressWaker{f}.Wake(context.Background(), c.ref, ingress.WakeOptions{Stopped: c.stopped})
			switch {
			case c.wantErr == errAny && err == nil, c.wantErr == nil && err != nil,
				c.wantErr != nil && c.wantErr != errAny && !errors.Is(err, c.wantErr):
				t.Fatalf("err %v, want %v", err, c.wantErr)
			}
			if info.From != c.wantFrom {
				t.Fatalf("from %q, want %q", info.From, c.wantFrom)
			}
			if info.Booted != strings.HasPrefix(c.calls, "start") {
				t.Fatalf("booted %v after calls %q", info.Booted, c.calls)
			}
			if got := strings.Join(f.called, " "); got != c.calls {
				t.Fatalf("calls %q, want %q", got, c.calls)
			}
		})
	}
}

var errAny = errors.New("any error")
