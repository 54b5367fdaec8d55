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

// templateCall runs promote or demote (501 without Templates).
func (s *server) templateCall(ctx context.Context, ref string, call func(Templates, context.Context, string) (*instances.Instance, error)) (gen.Instance, error) {
	if s.opts.Templates == nil {
		return gen.Instance{}, newError(http.StatusNotImplemented, CodeNotImplemented, "templates are not available on this server")
	}
	in, err := call(s.opts.Templates, ctx, ref)
	if err != nil {
		return gen.Instance{}, err
	}
	return s.instance(in), nil
}

func (s *server) PromoteTemplate(ctx context.Context, req gen.PromoteTemplateRequestObject) (gen.PromoteTemplateResponseObject, error) {
	in, err := s.templateCall(ctx, req.Id, Templates.PromoteTemplate)
	if err != nil {
		return nil, err
	}
	return gen.PromoteTemplate200JSONResponse(in), nil
}

func (s *server) DemoteTemplate(ctx context.Context, req gen.DemoteTemplateRequestObject) (gen.DemoteTemplateResponseObject, error) {
	in, err := s.templateCall(ctx, req.Id, Templates.DemoteTemplate)
	if err != nil {
		return nil, err
	}
	return gen.DemoteTemplate200JSONResponse(in), nil
}
