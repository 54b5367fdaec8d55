package api

// Snapshot schedules: /instances/{id}/snapshot-schedule (package
// schedules owns the records and the controller).

import (
	"context"
	"net/http"
	"time"

	"hypeman/internal/api/gen"
	"hypeman/internal/schedules"
)

// Schedules is the snapshot-schedule store (*schedules.Controller
// satisfies it). It is keyed by instance ID: handlers resolve the
// reference first. A missing schedule matches schedules.ErrNotFound.
type Schedules interface {
	Get(ctx context.Context, instanceID string) (*schedules.Schedule, error)
	Set(ctx context.Context, instanceID string, r schedules.Request) (*schedules.Schedule, error)
	Delete(ctx context.Context, instanceID string) error
}

// now is the server's clock (Options.Now, default time.Now).
func (s *server) now() time.Time {
	if s.opts.Now != nil {
		return s.opts.Now()
	}
	return time.Now()
}

// schedulesFor resolves the instance and returns the store.
func (s *server) schedulesFor(ctx context.Context, ref string) (Schedules, string, error) {
	if s.opts.Schedules == nil {
		return nil, "", newError(http.StatusNotImplemented, CodeNotImplemented, "snapshot schedules are not available on this server")
	}
	in, err := s.opts.Instances.Get(ctx, ref)
	if err != nil {
		return nil, "", err
	}
	return s.opts.Schedules, in.ID, nil
}

func toAPISchedule(sc *schedules.Schedule) gen.SnapshotSchedule {
	out := gen.SnapshotSchedule{
		InstanceId: sc.InstanceID, Interval: sc.Interval, NamePrefix: sc.NamePrefix, Metadata: optTags(sc.Metadata),
		NextRunAt: sc.NextRunAt, LastRunAt: sc.LastRunAt, LastSnapshotId: sc.LastSnapshotID, LastError: sc.LastError,
		CreatedAt: sc.CreatedAt, UpdatedAt: sc.UpdatedAt,
	}
	if n := sc.Retention.MaxCount; n > 0 {
		out.Retention.MaxCount = &n
	}
	if a := sc.Retention.MaxAge; a != "" {
		out.Retention.MaxAge = &a
	}
	return out
}

func (s *server) GetInstanceSnapshotSchedule(ctx context.Context, req gen.GetInstanceSnapshotScheduleRequestObject) (gen.GetInstanceSnapshotScheduleResponseObject, error) {
	st, id, err := s.schedulesFor(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	sc, err := st.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	return gen.GetInstanceSnapshotSchedule200JSONResponse(toAPISchedule(sc)), nil
}

func (s *server) SetInstanceSnapshotSchedule(ctx context.Context, req gen.SetInstanceSnapshotScheduleRequestObject) (gen.SetInstanceSnapshotScheduleResponseObject, error) {
	b := req.Body
	if b == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required")
	}
	st, id, err := s.schedulesFor(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	sc, err := st.Set(ctx, id, schedules.Request{
		Interval: b.Interval, NamePrefix: b.NamePrefix, Metadata: derefTags(b.Metadata),
		Retention: schedules.Retention{MaxCount: deref(b.Retention.MaxCount), MaxAge: deref(b.Retention.MaxAge)},
	})
	if err != nil {
		return nil, err
	}
	return gen.SetInstanceSnapshotSchedule200JSONResponse(toAPISchedule(sc)), nil
}

func (s *server) DeleteInstanceSnapshotSchedule(ctx context.Context, req gen.DeleteInstanceSnapshotScheduleRequestObject) (gen.DeleteInstanceSnapshotScheduleResponseObject, error) {
	st, id, err := s.schedulesFor(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	if err := st.Delete(ctx, id); err != nil {
		return nil, err
	}
	return gen.DeleteInstanceSnapshotSchedule204Response{}, nil
}
