package api

import (
	"context"
	"net/http"

	"hypeman/internal/api/gen"
	"hypeman/internal/network/ingress"
)

func (s *server) ingresses() (Ingresses, error) {
	if s.opts.Ingresses == nil {
		return nil, newError(http.StatusNotImplemented, CodeNotImplemented, "ingresses are not available on this server")
	}
	return s.opts.Ingresses, nil
}

func toAPIIngress(ing *ingress.Ingress) gen.Ingress {
	out := gen.Ingress{Id: ing.ID, Name: ing.Name, CreatedAt: ing.CreatedAt, Rules: make([]gen.IngressRule, 0, len(ing.Rules))}
	for _, r := range ing.Rules {
		port := r.Match.Port
		out.Rules = append(out.Rules, gen.IngressRule{
			Match:  gen.IngressMatch{Hostname: optString(r.Match.Hostname), Port: &port},
			Target: gen.IngressTarget{Instance: r.Target.Instance, Port: r.Target.Port},
		})
	}
	return out
}

func (s *server) ListIngresses(ctx context.Context, _ gen.ListIngressesRequestObject) (gen.ListIngressesResponseObject, error) {
	im, err := s.ingresses()
	if err != nil {
		return nil, err
	}
	list, err := im.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make(gen.ListIngresses200JSONResponse, 0, len(list))
	for _, ing := range list {
		out = append(out, toAPIIngress(ing))
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
	cr := ingress.CreateRequest{Name: req.Body.Name, Rules: make([]ingress.Rule, 0, len(req.Body.Rules))}
	for _, r := range req.Body.Rules {
		cr.Rules = append(cr.Rules, ingress.Rule{
			Match:  ingress.Match{Hostname: deref(r.Match.Hostname), Port: deref(r.Match.Port)},
			Target: ingress.Target{Instance: r.Target.Instance, Port: r.Target.Port},
		})
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
