package api

import (
	"context"
	"errors"
	"io"
	"net/http"

	"hypeman/internal/api/gen"
	"hypeman/internal/volumes"
)

// Volumes is the volume store (*volumes.Store satisfies it). Optional:
// without it the volume routes answer 501.
type Volumes interface {
	Create(ctx context.Context, p volumes.CreateParams) (*volumes.Volume, error)
	CreateFromArchive(ctx context.Context, p volumes.CreateParams, body io.Reader) (*volumes.Volume, error)
	Get(ctx context.Context, ref string) (*volumes.Volume, error)
	List(ctx context.Context, tags map[string]string) ([]*volumes.Volume, error)
	Delete(ctx context.Context, ref string) error
}

var _ Volumes = (*volumes.Store)(nil)

func (s *server) volumes() (Volumes, error) {
	if s.opts.Volumes == nil {
		return nil, notBuilt(featureVolumes)
	}
	return s.opts.Volumes, nil
}

// isStreamedBody reports the operations whose request body is streamed to
// the handler: no JSON body limit, no body buffering or validation (their
// own caps apply while they read).
func isStreamedBody(r *http.Request) bool {
	return r.Method == http.MethodPost && r.URL.Path == "/volumes/from-archive"
}

// unlessStreamed applies mw to every request except streamed-body ones.
func unlessStreamed(mw func(http.Handler) http.Handler) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		wrapped := mw(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isStreamedBody(r) {
				next.ServeHTTP(w, r)
				return
			}
			wrapped.ServeHTTP(w, r)
		})
	}
}

// onlyStreamed applies mw to streamed-body requests only.
func onlyStreamed(mw func(http.Handler) http.Handler) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		wrapped := mw(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isStreamedBody(r) {
				wrapped.ServeHTTP(w, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func toAPIVolume(v *volumes.Volume) gen.Volume {
	att := make([]gen.VolumeAttachment, 0, len(v.Attachments))
	for _, a := range v.Attachments {
		att = append(att, gen.VolumeAttachment{InstanceId: a.InstanceID, MountPath: a.MountPath, Readonly: a.ReadOnly})
	}
	return gen.Volume{
		Id: v.ID, Name: v.Name, SizeGb: v.SizeGB, CreatedAt: v.CreatedAt,
		Tags: optTags(v.Tags), Attachments: &att,
	}
}

func (s *server) ListVolumes(ctx context.Context, req gen.ListVolumesRequestObject) (gen.ListVolumesResponseObject, error) {
	vs, err := s.volumes()
	if err != nil {
		return nil, err
	}
	list, err := vs.List(ctx, derefTags(req.Params.Tags))
	if err != nil {
		return nil, err
	}
	out := make(gen.ListVolumes200JSONResponse, 0, len(list))
	for _, v := range list {
		out = append(out, toAPIVolume(v))
	}
	return out, nil
}

func (s *server) CreateVolume(ctx context.Context, req gen.CreateVolumeRequestObject) (gen.CreateVolumeResponseObject, error) {
	if req.Body == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required")
	}
	vs, err := s.volumes()
	if err != nil {
		return nil, err
	}
	p := volumes.CreateParams{Name: req.Body.Name, SizeGB: req.Body.SizeGb, Tags: derefTags(req.Body.Tags)}
	if req.Body.Id != nil {
		p.ID = *req.Body.Id
	}
	v, err := vs.Create(ctx, p)
	if err != nil {
		return nil, err
	}
	return gen.CreateVolume201JSONResponse(toAPIVolume(v)), nil
}

func (s *server) CreateVolumeFromArchive(ctx context.Context, req gen.CreateVolumeFromArchiveRequestObject) (gen.CreateVolumeFromArchiveResponseObject, error) {
	vs, err := s.volumes()
	if err != nil {
		return nil, err
	}
	p := volumes.CreateParams{Name: req.Params.Name, SizeGB: req.Params.SizeGb, Tags: derefTags(req.Params.Tags)}
	if req.Params.Id != nil {
		p.ID = *req.Params.Id
	}
	v, err := vs.CreateFromArchive(ctx, p, req.Body)
	if err != nil {
		return nil, err
	}
	return gen.CreateVolumeFromArchive201JSONResponse(toAPIVolume(v)), nil
}

func (s *server) GetVolume(ctx context.Context, req gen.GetVolumeRequestObject) (gen.GetVolumeResponseObject, error) {
	vs, err := s.volumes()
	if err != nil {
		return nil, err
	}
	v, err := vs.Get(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	return gen.GetVolume200JSONResponse(toAPIVolume(v)), nil
}

func (s *server) DeleteVolume(ctx context.Context, req gen.DeleteVolumeRequestObject) (gen.DeleteVolumeResponseObject, error) {
	vs, err := s.volumes()
	if err != nil {
		return nil, err
	}
	if err := vs.Delete(ctx, req.Id); err != nil {
		return nil, err
	}
	return gen.DeleteVolume204Response{}, nil
}

// classifyVolumeError maps the volume store's errors.
func classifyVolumeError(err error) (int, string, bool) {
	var tl *volumes.TooLargeError
	switch {
	case errors.As(err, &tl):
		return http.StatusRequestEntityTooLarge, CodeTooLarge, true
	case errors.Is(err, volumes.ErrNotFound):
		return http.StatusNotFound, CodeNotFound, true
	case errors.Is(err, volumes.ErrInUse), errors.Is(err, volumes.ErrExists):
		return http.StatusConflict, CodeConflict, true
	case errors.Is(err, volumes.ErrInvalid):
		return http.StatusBadRequest, CodeInvalidRequest, true
	}
	return 0, "", false
}
