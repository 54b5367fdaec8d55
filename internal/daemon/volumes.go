package daemon

import (
	"context"
	"errors"
	"fmt"

	"hypeman/internal/instances"
	"hypeman/internal/volumes"
)

// volumeStore is the volume store as the instance manager sees it
// (instances.VolumeStore): the two packages do not import each other, so
// the daemon converts their types and maps the store's errors onto the
// manager's sentinels, keeping the store's own wrapped too (the API names
// the volume and the instances holding it from the store's message).
type volumeStore struct{ s *volumes.Store }

func (v volumeStore) Get(ctx context.Context, ref string) (instances.VolumeInfo, error) {
	vol, err := v.s.Get(ctx, ref)
	if err != nil {
		return instances.VolumeInfo{}, volumeErr(err)
	}
	return volumeInfo(vol), nil
}

func (v volumeStore) Attach(ctx context.Context, ref string, a instances.VolumeAttachment) (instances.VolumeInfo, error) {
	vol, err := v.s.Attach(ctx, ref, volumes.Attachment{
		InstanceID: a.InstanceID, MountPath: a.MountPath, ReadOnly: a.ReadOnly, Overlay: a.Overlay,
	})
	if err != nil {
		return instances.VolumeInfo{}, volumeErr(err)
	}
	return volumeInfo(vol), nil
}

func (v volumeStore) Detach(ctx context.Context, id, instanceID string) error {
	err := v.s.Detach(ctx, id, instanceID)
	if errors.Is(err, volumes.ErrNotFound) {
		return nil // the volume is gone: nothing is attached
	}
	return volumeErr(err)
}

func (v volumeStore) DetachInstance(ctx context.Context, instanceID string) error {
	return volumeErr(v.s.DetachInstance(ctx, instanceID))
}

func volumeInfo(vol *volumes.Volume) instances.VolumeInfo {
	return instances.VolumeInfo{ID: vol.ID, Name: vol.Name, Path: vol.Path}
}

func volumeErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, volumes.ErrNotFound):
		return fmt.Errorf("%w: %w", instances.ErrVolumeNotFound, err)
	case errors.Is(err, volumes.ErrInUse):
		return fmt.Errorf("%w: %w", instances.ErrVolumeInUse, err)
	}
	return err
}

// reconcileVolumes makes the store's attachment table match what the
// loaded instances mount (their metadata is the truth; a crash between the
// store's write and the instance's leaves the two apart).
func reconcileVolumes(ctx context.Context, s *volumes.Store, live map[string][]instances.VolumeAttachment) error {
	byVolume := make(map[string][]volumes.Attachment, len(live))
	for id, as := range live {
		for _, a := range as {
			byVolume[id] = append(byVolume[id], volumes.Attachment{
				InstanceID: a.InstanceID, MountPath: a.MountPath, ReadOnly: a.ReadOnly, Overlay: a.Overlay,
			})
		}
	}
	return s.Reconcile(ctx, byVolume)
}
