package api

import (
	"context"
	"net/http"

	"hypeman/internal/api/gen"
	"hypeman/internal/tags"
)

func (s *server) ingresses() (Ingresses, error) {
	if s.opts.Ingresses == nil {
		return nil, newError(http.StatusNotImplemented, CodeNotImplemented, "ingresses are not available on this server")
	}
	return s.opts.Ingresses, nil
}

func (s *server) ListIngresses(ctx context.Context, req gen.ListIngressesRequestObject) (gen.ListIngressesResponseObject, error) {
	im, err := s.ingresses()
	if err != nil {
		return nil, err
	}
	list, err := im.List(ctx)
	if err != nil {
		return nil, err
	}
	want := derefTags(req.Params.Tags)
	out := make(gen.ListIngresses200JSONResponse, 0, len(list))
	for _, ing := range list {
		if tags.Match(ing.Tags, want) {
			out = append(out, toAPIIngress(ing))
		}
	}
	return out, nil
}

func (s *server) CreateIngress(ctx context.Context, req gen.CreateIngressRequestObject) (gen.CreateIngressResponseObject, error) {
	if req.Body == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required")
	}
	im, err := s.ingresses()
	if err != nil {
		return nil, err
	}
	cr, err := ingressFromAPI(req.Body)
	if err != nil {
		return nil, err
	}
	ing, err := im.Create(ctx, cr)
	if err != nil {
		return nil, err
	}
	return gen.CreateIngress201JSONResponse(toAPIIngress(ing)), nil
}

func (s *server) GetIngress(ctx context.Context, req gen.GetIngressRequestObject) (gen.GetIngressResponseObject, error) {
	im, err := s.ingresses()
	if err != nil {
		return nil, err
	}
	ing, err := im.Get(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	return gen.GetIngress200JSONResponse(toAPIIngress(ing)), nil
}

func (s *server) DeleteIngress(ctx context.Context, req gen.DeleteIngressRequestObject) (gen.DeleteIngressResponseObject, error) {
	im, err := s.ingresses()
	if err != nil {
		return nil, err
	}
	if err := im.Delete(ctx, req.Id); err != nil {
		return nil, err
	}
	return gen.DeleteIngress204Response{}, nil
}
