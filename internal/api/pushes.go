package api

// POST/GET /pushes: export images to other registries (internal/pushes).

import (
	"context"
	"errors"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"

	"hypeman/internal/api/gen"
	"hypeman/internal/pushes"
)

// Pushes exports images to remote registries (*pushes.Manager satisfies
// it). Optional: without it the /pushes routes answer 501.
type Pushes interface {
	Create(ctx context.Context, req pushes.Request) (*pushes.Push, error)
	Get(ctx context.Context, id string) (*pushes.Push, error)
	List(ctx context.Context) ([]pushes.Push, error)
}

var _ Pushes = (*pushes.Manager)(nil)

const featurePushes = "pushes to remote registries (push to hypemand's own registry at /v2/ instead)"

func (s *server) ListPushes(ctx context.Context, _ gen.ListPushesRequestObject) (gen.ListPushesResponseObject, error) {
	if s.opts.Pushes == nil {
		return nil, notBuilt(featurePushes)
	}
	list, err := s.opts.Pushes.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make(gen.ListPushes200JSONResponse, 0, len(list))
	for i := range list {
		out = append(out, toAPIPush(&list[i]))
	}
	return out, nil
}

func (s *server) CreatePush(ctx context.Context, req gen.CreatePushRequestObject) (gen.CreatePushResponseObject, error) {
	if s.opts.Pushes == nil {
		return nil, notBuilt(featurePushes)
	}
	b := req.Body
	if b == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required")
	}
	auth, err := registryAuth(b.Credentials)
	if err != nil {
		return nil, err
	}
	p, err := s.opts.Pushes.Create(ctx, pushes.Request{Image: b.Image, Target: b.Target, Insecure: deref(b.Insecure), Auth: auth})
	if err != nil {
		return nil, err
	}
	return gen.CreatePush202JSONResponse(toAPIPush(p)), nil
}

func (s *server) GetPush(ctx context.Context, req gen.GetPushRequestObject) (gen.GetPushResponseObject, error) {
	if s.opts.Pushes == nil {
		return nil, notBuilt(featurePushes)
	}
	p, err := s.opts.Pushes.Get(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	return gen.GetPush200JSONResponse(toAPIPush(p)), nil
}

// registryAuth turns request credentials (pulls and pushes) into an
// authenticator: nil for none, 400 when given both ways.
func registryAuth(c *gen.PushCredentials) (authn.Authenticator, error) {
	if c == nil {
		return nil, nil
	}
	user, pass, token := deref(c.Username), deref(c.Password), deref(c.RegistryToken)
	switch {
	case token != "" && (user != "" || pass != ""):
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "invalid credentials: give either registry_token or username and password, not both")
	case token != "":
		return &authn.Bearer{Token: token}, nil
	case user != "" || pass != "":
		return &authn.Basic{Username: user, Password: pass}, nil
	}
	return nil, nil
}

func toAPIPush(p *pushes.Push) gen.Push {
	out := gen.Push{
		Id: p.ID, Image: p.Image, Digest: p.Digest, Target: p.Target, Status: gen.PushStatus(p.Status),
		Error: optString(p.Error), Layers: &p.Layers, Bytes: &p.BytesDone, BytesTotal: &p.Bytes,
		CreatedAt: p.CreatedAt, CompletedAt: p.CompletedAt,
	}
	if p.QueuePosition > 0 {
		out.QueuePosition = &p.QueuePosition
	}
	return out
}

// classifyPushError maps the push manager's errors.
func classifyPushError(err error) (int, string, bool) {
	switch {
	case errors.Is(err, pushes.ErrInvalid):
		return http.StatusBadRequest, CodeInvalidRequest, true
	case errors.Is(err, pushes.ErrNotFound):
		return http.StatusNotFound, CodeNotFound, true
	case errors.Is(err, pushes.ErrClosed):
		return http.StatusServiceUnavailable, CodeUnavailable, true
	}
	return 0, "", false
}
