package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"hypeman/internal/api/gen"
	"hypeman/internal/health"
	"hypeman/internal/instances"
	"hypeman/internal/restart"
)

// Restart policies and health checks cross the API as the generated types
// and are converted to and from restart.Policy / health.Check through their
// JSON, which the spec and those packages define identically (durations as
// Go duration strings, snake_case fields). Going through JSON keeps one
// decoder of each shape — the packages' own, which fill in the defaults and
// name the offending field in their errors (restart_policy.backoff, …) — and
// TestPolicyJSONShapesMatch fails if the spec and a package drift apart.

// UpdateInstance is PATCH /instances/{id}: a field present replaces the
// setting, a field left out is unchanged; health_check {} removes the check.
func (s *server) UpdateInstance(ctx context.Context, req gen.UpdateInstanceRequestObject) (gen.UpdateInstanceResponseObject, error) {
	b := req.Body
	if b == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required")
	}
	var p instances.UpdateParams
	var err error
	if p.RestartPolicy, err = toRestartPolicy(b.RestartPolicy); err != nil {
		return nil, err
	}
	if p.HealthCheck, err = toHealthCheck(b.HealthCheck); err != nil {
		return nil, err
	}
	in, err := s.opts.Instances.Update(ctx, req.Id, p)
	if err != nil {
		return nil, err
	}
	out, err := toAPIInstance(in)
	if err != nil {
		return nil, err
	}
	return gen.UpdateInstance200JSONResponse(out), nil
}

// toRestartPolicy decodes a request's restart policy (nil stays nil).
// Unparsable durations fail with *restart.FieldError (400); range checks
// are the manager's (Validate).
func toRestartPolicy(in *gen.RestartPolicy) (*restart.Policy, error) {
	if in == nil {
		return nil, nil
	}
	var out restart.Policy
	if err := recode(in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// toHealthCheck decodes a request's health check (nil stays nil; {} is the
// zero Check, which means none).
func toHealthCheck(in *gen.HealthCheck) (*health.Check, error) {
	if in == nil {
		return nil, nil
	}
	var out health.Check
	if err := recode(in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// policyFields fills the four restart/health fields of an API instance.
func policyFields(in *instances.Instance, out *gen.Instance) error {
	if in.RestartPolicy != nil {
		out.RestartPolicy = new(gen.RestartPolicy)
		if err := recode(in.RestartPolicy, out.RestartPolicy); err != nil {
			return err
		}
	}
	if in.RestartStatus != nil {
		out.RestartStatus = new(gen.RestartStatus)
		if err := recode(in.RestartStatus, out.RestartStatus); err != nil {
			return err
		}
	}
	if in.HealthCheck != nil {
		out.HealthCheck = new(gen.HealthCheck)
		if err := recode(in.HealthCheck, out.HealthCheck); err != nil {
			return err
		}
	}
	if in.HealthStatus != nil {
		out.HealthStatus = new(gen.HealthCheckStatus)
		if err := recode(in.HealthStatus, out.HealthStatus); err != nil {
			return err
		}
	}
	return nil
}

// recode converts src to dst through JSON. Errors of dst's decoder are
// returned unwrapped when they are typed (restart/health FieldError), so
// classify maps them to 400; anything else means the spec and a package
// disagree on a shape, which is a server bug (500).
func recode(src, dst any) error {
	b, err := json.Marshal(src)
	if err != nil {
		return fmt.Errorf("api: encode %T: %w", src, err)
	}
	if err := json.Unmarshal(b, dst); err != nil {
		if errors.Is(err, restart.ErrInvalid) || errors.Is(err, health.ErrInvalid) {
			return err
		}
		return fmt.Errorf("api: convert %T to %T: %w", src, dst, err)
	}
	return nil
}
