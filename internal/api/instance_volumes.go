package api

// Attaching and detaching volumes on instances (POST/DELETE
// /instances/{id}/volumes/{volumeId}). The volume resource itself
// (/volumes) is volumes.go.

import (
	"context"
	"net/http"

	"hypeman/internal/api/gen"
	"hypeman/internal/instances"
)

// InstanceVolumes attaches volumes to Stopped instances and detaches them
// (*instances.Manager satisfies it). Missing volumes must yield errors
// matching instances.ErrVolumeNotFound, refused attachments
// instances.ErrVolumeInUse.
type InstanceVolumes interface {
	AttachVolume(ctx context.Context, ref, volumeRef string, p instances.VolumeMount) (*instances.Instance, error)
	DetachVolume(ctx context.Context, ref, volumeRef string) (*instances.Instance, error)
}

var _ InstanceVolumes = (*instances.Manager)(nil)

func (s *server) instanceVolumes() (InstanceVolumes, error) {
	if s.opts.InstanceVolumes == nil {
		return nil, notBuilt(featureVolumes)
	}
	return s.opts.InstanceVolumes, nil
}

func (s *server) AttachVolume(ctx context.Context, req gen.AttachVolumeRequestObject) (gen.AttachVolumeResponseObject, error) {
	iv, err := s.instanceVolumes()
	if err != nil {
		return nil, err
	}
	if req.Body == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required: {\"mount_path\": \"/data\", \"readonly\": false}")
	}
	in, err := iv.AttachVolume(ctx, req.Id, req.VolumeId, instances.VolumeMount{
		MountPath: req.Body.MountPath, ReadOnly: deref(req.Body.Readonly)})
	if err != nil {
		return nil, err
	}
	return gen.AttachVolume200JSONResponse(s.instance(in)), nil
}

func (s *server) DetachVolume(ctx context.Context, req gen.DetachVolumeRequestObject) (gen.DetachVolumeResponseObject, error) {
	iv, err := s.instanceVolumes()
	if err != nil {
		return nil, err
	}
	in, err := iv.DetachVolume(ctx, req.Id, req.VolumeId)
	if err != nil {
		return nil, err
	}
	return gen.DetachVolume200JSONResponse(s.instance(in)), nil
}
