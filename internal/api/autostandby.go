package api

import (
	"context"
	"net/http"
	"time"

	"hypeman/internal/api/gen"
	"hypeman/internal/autostandby"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
)

// AutoStandby is the auto-standby controller as the handlers use it
// (autostandby.Controller).
type AutoStandby interface {
	InstanceStatus(ctx context.Context, ref string) (autostandby.Status, error)
	HoldInstance(ctx context.Context, ref string, until time.Time, d time.Duration) (autostandby.Status, error)
}

// maxHold bounds a hold (the same bound as idle_timeout).
const maxHold = autostandby.MaxIdleTimeout

// autoStandbyFromAPI converts and validates a policy (nil: field absent).
// An empty object removes the policy.
func autoStandbyFromAPI(in *gen.AutoStandbyPolicy) (*autostandby.Policy, error) {
	if in == nil {
		return nil, nil
	}
	p := autostandby.Policy{Enabled: deref(in.Enabled), IdleTimeout: deref(in.IdleTimeout)}
	p.IgnoreSourceCIDRs = deref(in.IgnoreSourceCidrs)
	p.IgnoreDestinationPorts = deref(in.IgnoreDestinationPorts)
	// {"enabled": false} is a policy (disabled); {} removes it.
	p.Configured = in.Enabled != nil || !p.IsZero()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// toAPIAutoStandby is the instance's policy as the API shows it.
func toAPIAutoStandby(p *autostandby.Policy) *gen.AutoStandbyPolicy {
	if p == nil {
		return nil
	}
	out := &gen.AutoStandbyPolicy{Enabled: &p.Enabled}
	if p.IdleTimeout != "" {
		out.IdleTimeout = &p.IdleTimeout
	}
	if len(p.IgnoreSourceCIDRs) > 0 {
		out.IgnoreSourceCidrs = &p.IgnoreSourceCIDRs
	}
	if len(p.IgnoreDestinationPorts) > 0 {
		out.IgnoreDestinationPorts = &p.IgnoreDestinationPorts
	}
	return out
}

func toAPIAutoStandbyStatus(s autostandby.Status) gen.AutoStandbyStatus {
	out := gen.AutoStandbyStatus{
		Supported: s.Supported, Configured: s.Configured, Enabled: s.Enabled, Eligible: s.Eligible,
		Status: gen.AutoStandbyStatusStatus(s.Status), Reason: gen.AutoStandbyStatusReason(s.Reason),
		ActiveInboundConnections: s.ActiveInboundConnections, TrackingMode: s.TrackingMode,
		IdleSince: utcPtr(s.IdleSince), LastInboundActivityAt: utcPtr(s.LastInboundActivityAt),
		NextStandbyAt: utcPtr(s.NextStandbyAt), HoldUntil: utcPtr(s.HoldUntil),
	}
	// Go's Duration.String, as hypeman prints them ("5m0s").
	if s.IdleTimeout != nil {
		v := s.IdleTimeout.String()
		out.IdleTimeout = &v
	}
	if s.CountdownRemaining != nil {
		v := s.CountdownRemaining.Round(time.Second).String()
		out.CountdownRemaining = &v
	}
	return out
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// unsupportedAutoStandby is the answer of a daemon without the controller
// (no networking): hypeman's status for a host without auto-standby.
func unsupportedAutoStandby() gen.AutoStandbyStatus {
	return gen.AutoStandbyStatus{
		Status: gen.AutoStandbyStatusStatusUnsupported, Reason: gen.AutoStandbyStatusReasonUnsupportedPlatform, TrackingMode: "none",
	}
}

func (s *server) GetAutoStandbyStatus(ctx context.Context, req gen.GetAutoStandbyStatusRequestObject) (gen.GetAutoStandbyStatusResponseObject, error) {
	if s.opts.AutoStandby == nil {
		if _, err := s.opts.Instances.Get(ctx, req.Id); err != nil {
			return nil, err
		}
		return gen.GetAutoStandbyStatus200JSONResponse(unsupportedAutoStandby()), nil
	}
	st, err := s.opts.AutoStandby.InstanceStatus(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	return gen.GetAutoStandbyStatus200JSONResponse(toAPIAutoStandbyStatus(st)), nil
}

// holdArgs validates a hold request body.
func holdArgs(b *gen.HoldAutoStandbyJSONRequestBody, now time.Time) (time.Time, time.Duration, error) {
	if b == nil {
		return time.Time{}, 0, nil
	}
	if b.Duration != nil && b.HoldUntil != nil {
		return time.Time{}, 0, newError(http.StatusBadRequest, CodeInvalidRequest, "send either duration or hold_until, not both")
	}
	if b.Duration != nil {
		d, err := time.ParseDuration(*b.Duration)
		if err != nil || d < time.Second || d > maxHold {
			return time.Time{}, 0, &instances.InvalidArgumentError{Field: "duration", Reason: "must be a Go duration from 1s to 720h (e.g. 10m)"}
		}
		return time.Time{}, d, nil
	}
	if b.HoldUntil != nil {
		if !b.HoldUntil.After(now) || b.HoldUntil.Sub(now) > maxHold {
			return time.Time{}, 0, &instances.InvalidArgumentError{Field: "hold_until", Reason: "must be in the future and at most 720h ahead"}
		}
		return *b.HoldUntil, 0, nil
	}
	return time.Time{}, 0, nil
}

func (s *server) HoldAutoStandby(ctx context.Context, req gen.HoldAutoStandbyRequestObject) (gen.HoldAutoStandbyResponseObject, error) {
	until, d, err := holdArgs(req.Body, time.Now())
	if err != nil {
		return nil, err
	}
	in, err := s.opts.Instances.Get(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	if in.State == state.Standby || in.State == state.Template {
		return nil, newError(http.StatusConflict, CodeInstanceInStandby, "instance %s is on standby: restore it before connecting", in.Name)
	}
	if s.opts.AutoStandby == nil {
		// Nothing puts instances on standby here: safe to connect.
		return gen.HoldAutoStandby200JSONResponse(unsupportedAutoStandby()), nil
	}
	st, err := s.opts.AutoStandby.HoldInstance(ctx, in.ID, until, d)
	if err != nil {
		return nil, err
	}
	return gen.HoldAutoStandby200JSONResponse(toAPIAutoStandbyStatus(st)), nil
}
