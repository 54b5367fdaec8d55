package api

import (
	"context"
	"net/http"

	"hypeman/internal/api/gen"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
)

// lifecycle returns the optional Lifecycle or a 501.
func (s *server) lifecycle() (Lifecycle, error) {
	if s.opts.Lifecycle == nil {
		return nil, newError(http.StatusNotImplemented, CodeNotImplemented, "standby, restore, pause, resume and fork are not available on this server")
	}
	return s.opts.Lifecycle, nil
}

// transition runs one of the single-reference lifecycle calls.
func (s *server) transition(ctx context.Context, ref string, call func(Lifecycle, context.Context, string) (*instances.Instance, error)) (gen.Instance, error) {
	l, err := s.lifecycle()
	if err != nil {
		return gen.Instance{}, err
	}
	in, err := call(l, ctx, ref)
	if err != nil {
		return gen.Instance{}, err
	}
	return s.instance(in), nil
}

func (s *server) StandbyInstance(ctx context.Context, req gen.StandbyInstanceRequestObject) (gen.StandbyInstanceResponseObject, error) {
	var p instances.StandbyParams
	if b := req.Body; b != nil {
		var err error
		if p.Compression, err = compressionFromAPI("compression", b.Compression); err != nil {
			return nil, err
		}
		if p.CompressionDelay, err = delayFromAPI("compression_delay", b.CompressionDelay); err != nil {
			return nil, err
		}
	}
	in, err := s.transition(ctx, req.Id, func(l Lifecycle, ctx context.Context, ref string) (*instances.Instance, error) {
		return l.Standby(ctx, ref, p)
	})
	if err != nil {
		return nil, err
	}
	return gen.StandbyInstance200JSONResponse(in), nil
}

func (s *server) RestoreInstance(ctx context.Context, req gen.RestoreInstanceRequestObject) (gen.RestoreInstanceResponseObject, error) {
	in, err := s.transition(ctx, req.Id, Lifecycle.Restore)
	if err != nil {
		return nil, err
	}
	return gen.RestoreInstance200JSONResponse(in), nil
}

func (s *server) PauseInstance(ctx context.Context, req gen.PauseInstanceRequestObject) (gen.PauseInstanceResponseObject, error) {
	in, err := s.transition(ctx, req.Id, Lifecycle.Pause)
	if err != nil {
		return nil, err
	}
	return gen.PauseInstance200JSONResponse(in), nil
}

func (s *server) ResumeInstance(ctx context.Context, req gen.ResumeInstanceRequestObject) (gen.ResumeInstanceResponseObject, error) {
	in, err := s.transition(ctx, req.Id, Lifecycle.Resume)
	if err != nil {
		return nil, err
	}
	return gen.ResumeInstance200JSONResponse(in), nil
}

// targetState converts an optional target state (the spec's enums already
// limit it; the manager checks what a source allows).
func targetState[T ~string](t *T) (state.State, error) {
	if t == nil {
		return "", nil
	}
	st, err := state.Parse(string(*t))
	if err != nil {
		return "", &instances.InvalidArgumentError{Field: "target_state", Reason: err.Error()}
	}
	return st, nil
}

func (s *server) ForkInstance(ctx context.Context, req gen.ForkInstanceRequestObject) (gen.ForkInstanceResponseObject, error) {
	if req.Body == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required")
	}
	l, err := s.lifecycle()
	if err != nil {
		return nil, err
	}
	target, err := targetState(req.Body.TargetState)
	if err != nil {
		return nil, err
	}
	in, err := l.Fork(ctx, req.Id, instances.ForkParams{
		Name: req.Body.Name, FromRunning: deref(req.Body.FromRunning), TargetState: target,
	})
	if err != nil {
		return nil, err
	}
	return gen.ForkInstance201JSONResponse(s.instance(in)), nil
}
