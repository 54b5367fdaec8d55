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

func (s *server) CreateInstanceSnapshot(ctx context.Context, req gen.CreateInstanceSnapshotRequestObject) (gen.CreateInstanceSnapshotResponseObject, error) {
	b := req.Body
	if b == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required")
	}
	sm, err := s.snapshots()
	if err != nil {
		return nil, err
	}
	switch b.Kind {
	case gen.SnapshotKindStandby, gen.SnapshotKindStopped:
	default: // the validator enforces the enum; this is the second line
		return nil, &instances.InvalidArgumentError{Field: "kind", Reason: "must be Standby or Stopped"}
	}
	comp, err := compressionFromAPI("compression", b.Compression)
	if err != nil {
		return nil, err
	}
	sn, err := sm.CreateSnapshot(ctx, req.Id, instances.SnapshotParams{
		Kind: instances.SnapshotKind(b.Kind), Name: deref(b.Name), Tags: derefTags(b.Tags), Compression: comp,
	})
	if err != nil {
		return nil, err
	}
	return gen.CreateInstanceSnapshot201JSONResponse(toAPISnapshot(sn)), nil
}

// ListSnapshots filters by hypeman's fields in the manager; this server's
// `instance` filter is resolved here: the reference resolves like any
// instance reference while the instance exists, and still matches the
// recorded source id or name after it was deleted.
func (s *server) ListSnapshots(ctx context.Context, req gen.ListSnapshotsRequestObject) (gen.ListSnapshotsResponseObject, error) {
	sm, err := s.snapshots()
	if err != nil {
		return nil, err
	}
	p := req.Params
	f := instances.SnapshotFilter{
		SourceInstanceID: deref(p.SourceInstanceId), Name: deref(p.Name), Tags: derefTags(p.Tags),
	}
	if p.Kind != nil {
		f.Kind = instances.SnapshotKind(*p.Kind)
	}
	var match func(*instances.Snapshot) bool
	if ref := deref(p.Instance); ref != "" {
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
	list, err := sm.ListSnapshots(ctx, f)
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

func (s *server) RestoreInstanceSnapshot(ctx context.Context, req gen.RestoreInstanceSnapshotRequestObject) (gen.RestoreInstanceSnapshotResponseObject, error) {
	sm, err := s.snapshots()
	if err != nil {
		return nil, err
	}
	var p instances.RestoreSnapshotParams
	if b := req.Body; b != nil {
		if err := checkHypervisor("target_hypervisor", b.TargetHypervisor); err != nil {
			return nil, err
		}
		if p.TargetState, err = targetState(b.TargetState); err != nil {
			return nil, err
		}
	}
	in, err := sm.RestoreSnapshot(ctx, req.Id, req.Sid, p)
	if err != nil {
		return nil, err
	}
	return gen.RestoreInstanceSnapshot200JSONResponse(s.instance(in)), nil
}

func (s *server) ForkSnapshot(ctx context.Context, req gen.ForkSnapshotRequestObject) (gen.ForkSnapshotResponseObject, error) {
	b := req.Body
	if b == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required")
	}
	sm, err := s.snapshots()
	if err != nil {
		return nil, err
	}
	if err := checkHypervisor("target_hypervisor", b.TargetHypervisor); err != nil {
		return nil, err
	}
	target, err := targetState(b.TargetState)
	if err != nil {
		return nil, err
	}
	in, err := sm.ForkSnapshot(ctx, req.Id, instances.ForkParams{Name: b.Name, TargetState: target})
	if err != nil {
		return nil, err
	}
	return gen.ForkSnapshot201JSONResponse(s.instance(in)), nil
}
