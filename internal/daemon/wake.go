package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/network/ingress"
	"hypeman/internal/resources"
)

// wakeManager is what ingressWaker needs of the instance manager.
type wakeManager interface {
	Get(ctx context.Context, ref string) (*instances.Instance, error)
	Restore(ctx context.Context, ref string) (*instances.Instance, error)
	Start(ctx context.Context, ref string, p instances.StartParams) (*instances.Instance, error)
	WaitForState(ctx context.Context, ref string, targets []state.State, timeout time.Duration) (events.WaitResult, error)
}

// ingressWaker implements ingress.Waker over the instance manager: Standby
// is restored, Stopped started when the rule allows it; both go through
// the manager's admission like any restore or start. Paused, Template and
// the rest are not woken (ingress.ErrNotAsleep).
type ingressWaker struct{ m wakeManager }

// wakeWaitFallback bounds the wait for Running when ctx has no deadline.
const wakeWaitFallback = time.Minute

func (w ingressWaker) Wake(ctx context.Context, ref string, opts ingress.WakeOptions) (ingress.WakeInfo, error) {
	in, err := w.m.Get(ctx, ref)
	if err != nil {
		return ingress.WakeInfo{}, fmt.Errorf("%w: %v", ingress.ErrNotAsleep, err)
	}
	info := ingress.WakeInfo{From: string(in.State)}
	switch in.State {
	case state.Standby:
		_, err = w.m.Restore(ctx, in.ID)
	case state.Stopped:
		if !opts.Stopped {
			return ingress.WakeInfo{}, fmt.Errorf("%w: instance %s is Stopped and the ingress rule does not set wake_stopped", ingress.ErrNotAsleep, in.Name)
		}
		_, err = w.m.Start(ctx, in.ID, instances.StartParams{})
		info.Booted = true
	case state.Running:
		return ingress.WakeInfo{}, nil
	case state.Initializing:
		info.From = "" // booting already (someone else started it): wait
	default:
		return ingress.WakeInfo{}, fmt.Errorf("%w: instance %s is %s", ingress.ErrNotAsleep, in.Name, in.State)
	}
	if err != nil {
		var ins *resources.InsufficientError
		if errors.As(err, &ins) {
			return info, fmt.Errorf("%w: %w", ingress.ErrWakeRefused, err)
		}
		var te *instances.TransitionError
		if !errors.As(err, &te) {
			return info, err
		}
		// Lost a race with another restore or start (an API call, another
		// rule): what counts is that it ends Running.
	}
	timeout := wakeWaitFallback
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	res, err := w.m.WaitForState(ctx, in.ID, []state.State{state.Running}, timeout)
	switch {
	case err != nil:
		return info, err
	case res.TimedOut:
		return info, fmt.Errorf("instance %s not Running after %s (state %s): %w", in.Name, timeout.Round(time.Millisecond), res.State, context.DeadlineExceeded)
	case res.Reached != state.Running:
		msg := ""
		if res.StateError != nil {
			msg = ": " + *res.StateError
		}
		return info, fmt.Errorf("instance %s is %s after the wake%s", in.Name, res.State, msg)
	}
	return info, nil
}
