package api

import (
	"context"
	"net/http"

	"hypeman/internal/api/gen"
	"hypeman/internal/instances"
)

// Templates promotes Standby instances to Template and back
// (*instances.Manager satisfies it; kernel/hypeman PR #229's routes).
// Optional: without it the routes answer 501. A refusal because forks
// exist is an *instances.TemplateInUseError, which unwraps to a
// TransitionError: 409 invalid_state, its message naming the forks.
type Templates interface {
	PromoteTemplate(ctx context.Context, ref string) (*instances.Instance, error)
	DemoteTemplate(ctx context.Context, ref string) (*instances.Instance, error)
}

func (s *server) templates() (Templates, error) {
	if s.opts.Templates == nil {
		return nil, newError(http.StatusNotImplemented, CodeNotImplemented, "templates are not available on this server")
	}
	return s.opts.Templates, nil
}

func (s *server) PromoteTemplate(ctx context.Context, req gen.PromoteTemplateRequestObject) (gen.PromoteTemplateResponseObject, error) {
	t, err := s.templates()
	if err != nil {
		return nil, err
	}
	in, err := t.PromoteTemplate(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	return gen.PromoteTemplate200JSONResponse(s.instance(in)), nil
}

func (s *server) DemoteTemplate(ctx context.Context, req gen.DemoteTemplateRequestObject) (gen.DemoteTemplateResponseObject, error) {
	t, err := s.templates()
	if err != nil {
		return nil, err
	}
	in, err := t.DemoteTemplate(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	return gen.DemoteTemplate200JSONResponse(s.instance(in)), nil
}
