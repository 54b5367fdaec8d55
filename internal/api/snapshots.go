package api

import (
	"context"
	"errors"
	"net/http"

	"hypeman/internal/api/gen"
	"hypeman/internal/instances"
)

func (s *server) snapshots() (Snapshots, error) {
	if s.opts.Snapshots == nil {
		return nil, newError(http.StatusNotImplemented, CodeNotImplemented, "snapshots are not available on this server")
	}
	return s.opts.Snapshots, nil
}

func toAPISnapshot(sn *instances.Snapshot) gen.Snapshot {
	out := gen.Snapshot{
		Id: sn.ID, Name: sn.Name, Kind: gen.SnapshotKind(sn.Kind),
		SourceInstanceId: sn.SourceInstanceID, SourceInstanceName: sn.SourceInstanceName,
		Image: sn.Image, ImageDigest: optString(sn.ImageDigest),
		CreatedAt: sn.CreatedAt, SizeBytes: sn.SizeBytes, MemoryBytes: sn.MemoryBytes,
		Compressed: sn.CompressionState == instances.CompressionStateCompressed,
	}
	if sn.Tags != nil {
		tags := sn.Tags
		out.Tags = &tags
	}
	return out
}

func (s *server) CreateSnapshot(ctx context.Context, req gen.CreateSnapshotRequestObject) (gen.CreateSnapshotResponseObject, error) {
	if req.Body == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required")
	}
	sm, err := s.snapshots()
	if err != nil {
		return nil, err
	}
	b := req.Body
	kind := deref(b.Kind) // "" = the manager picks by state
	switch kind {
	case "", gen.SnapshotKindStandby, gen.SnapshotKindStopped:
	default: // the validator enforces the enum; this is the second line
		return nil, &instances.InvalidArgumentError{Field: "kind", Reason: "must be Standby or Stopped"}
	}
	sn, err := sm.CreateSnapshot(ctx, req.Id, instances.SnapshotParams{
		Kind: instances.SnapshotKind(kind), Name: deref(b.Name), Tags: deref(b.Tags),
	})
	if err != nil {
		return nil, err
	}
	return gen.CreateSnapshot201JSONResponse(toAPISnapshot(sn)), nil
}

// ListSnapshots filters by source instance in the handler: the reference
// resolves like any instance reference while the instance exists, and
// still matches the recorded source id or name after it was deleted.
func (s *server) ListSnapshots(ctx context.Context, req gen.ListSnapshotsRequestObject) (gen.ListSnapshotsResponseObject, error) {
	sm, err := s.snapshots()
	if err != nil {
		return nil, err
	}
	var match func(*instances.Snapshot) bool
	if ref := deref(req.Params.Instance); ref != "" {
		resolved := ""
		in, err := s.opts.Instances.Get(ctx, ref)
		switch {
		case err == nil:
			resolved = in.ID
		case !errors.Is(err, instances.ErrNotFound):
			return nil, err // ambiguous prefix, ...
		}
		match = func(sn *instances.Snapshot) bool {
			return sn.SourceInstanceID == ref || sn.SourceInstanceName == ref ||
				(resolved != "" && sn.SourceInstanceID == resolved)
		}
	}
	list, err := sm.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	out := make(gen.ListSnapshots200JSONResponse, 0, len(list))
	for _, sn := range list {
		if match == nil || match(sn) {
			out = append(out, toAPISnapshot(sn))
		}
	}
	return out, nil
}

func (s *server) GetSnapshot(ctx context.Context, req gen.GetSnapshotRequestObject) (gen.GetSnapshotResponseObject, error) {
	sm, err := s.snapshots()
	if err != nil {
		return nil, err
	}
	sn, err := sm.GetSnapshot(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	return gen.GetSnapshot200JSONResponse(toAPISnapshot(sn)), nil
}

func (s *server) DeleteSnapshot(ctx context.Context, req gen.DeleteSnapshotRequestObject) (gen.DeleteSnapshotResponseObject, error) {
	sm, err := s.snapshots()
	if err != nil {
		return nil, err
	}
	if err := sm.DeleteSnapshot(ctx, req.Id); err != nil {
		return nil, err
	}
	return gen.DeleteSnapshot204Response{}, nil
}

func (s *server) RestoreSnapshot(ctx context.Context, req gen.RestoreSnapshotRequestObject) (gen.RestoreSnapshotResponseObject, error) {
	sm, err := s.snapshots()
	if err != nil {
		return nil, err
	}
	in, err := sm.RestoreSnapshot(ctx, req.Id, req.Sid)
	if err != nil {
		return nil, err
	}
	out, err := toAPIInstance(in)
	if err != nil {
		return nil, err
	}
	return gen.RestoreSnapshot200JSONResponse(out), nil
}

func (s *server) ForkSnapshot(ctx context.Context, req gen.ForkSnapshotRequestObject) (gen.ForkSnapshotResponseObject, error) {
	if req.Body == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required")
	}
	sm, err := s.snapshots()
	if err != nil {
		return nil, err
	}
	target, err := forkTarget(req.Body.TargetState)
	if err != nil {
		return nil, err
	}
	in, err := sm.ForkSnapshot(ctx, req.Id, instances.ForkParams{Name: req.Body.Name, TargetState: target})
	if err != nil {
		return nil, err
	}
	out, err := toAPIInstance(in)
	if err != nil {
		return nil, err
	}
	return gen.ForkSnapshot201JSONResponse(out), nil
}
