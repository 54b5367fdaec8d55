package instances

// Admission control and guest memory for internal/resources: what each
// instance holds is derived from its metadata here, in one place, and the
// lifecycle calls these helpers at create, boot, restore, fork, VM exit
// and delete.

import (
	"context"
	"errors"
	"fmt"
	"os"

	"hypeman/internal/hypervisor"
	"hypeman/internal/resources"
)

// Admission is the host's allocation ledger (resources.Ledger): Admit
// checks and holds atomically (replacing the instance's earlier hold) and
// fails with *resources.InsufficientError; Release gives back the running
// resources or everything. Config.Admission nil = no admission control.
type Admission interface {
	Admit(ctx context.Context, d resources.Demand) error
	Hold(d resources.Demand)
	Release(instanceID string, what resources.ReleaseKind)
}

// demand is what an instance of meta holds; running adds cpu, memory,
// network and disk I/O to its disk.
func demand(meta Metadata, running bool) resources.Demand {
	disk, vols := meta.OverlayBytes, int64(0)
	for _, v := range meta.Volumes {
		disk += v.OverlayBytes // the instance's own layer over the volume
		if fi, err := os.Stat(v.Path); err == nil {
			vols += fi.Size()
		}
	}
	return resources.Demand{
		InstanceID: meta.ID, InstanceName: meta.Name, Running: running,
		CPU: meta.VCPUs, MemoryBytes: meta.MemoryBytes + meta.Limits.HotplugBytes,
		DiskBytes: disk, VolumeBytes: vols,
		NetworkDownloadBps: meta.Limits.DownloadBytesPerSec, NetworkUploadBps: meta.Limits.UploadBytesPerSec,
		DiskIOBps: meta.Limits.DiskIOBytesPerSec,
	}
}

// admit holds what meta needs (running or disk only) or refuses.
func (m *Manager) admit(ctx context.Context, meta Metadata, running bool) error {
	if m.cfg.Admission == nil {
		return nil
	}
	return m.cfg.Admission.Admit(ctx, demand(meta, running))
}

// release gives back what id holds (running resources, or all).
func (m *Manager) release(id string, what resources.ReleaseKind) {
	if m.cfg.Admission != nil {
		m.cfg.Admission.Release(id, what)
	}
}

// settleAdmission, deferred by operations that admitted e to run, gives
// the running resources back when the operation ended without a VM.
func (m *Manager) settleAdmission(e *entry) {
	e.mu.Lock()
	live, id := e.live != nil, e.meta.ID
	e.mu.Unlock()
	if !live {
		m.release(id, resources.ReleaseRunning)
	}
}

// releaseOnExit gives back the running resources of a VM that ended
// (caller holds e.mu). A source on standby only for a fork (ReturnTo set)
// keeps them: it comes back at once, and the fork must not take its room.
func (m *Manager) releaseOnExit(e *entry) {
	if e.meta.ReturnTo == "" {
		m.release(e.meta.ID, resources.ReleaseRunning)
	}
}

// seedAdmission records what the loaded instances hold (daemon start):
// those with a VMM hold their running resources, all hold their disk.
func (m *Manager) seedAdmission() {
	if m.cfg.Admission == nil {
		return
	}
	for _, e := range m.allEntries() {
		e.mu.Lock()
		if e.broken == "" {
			m.cfg.Admission.Hold(demand(e.meta, e.live != nil || e.meta.ReturnTo != ""))
		}
		e.mu.Unlock()
	}
}

// StandbyDirName is the dir inside an instance dir holding its saved memory
// state (the disk breakdown counts it with snapshots).
const StandbyDirName = standbyDir

// --- resources.Guests (memory reclaim) ---

// BalloonGuests lists the running instances whose memory a balloon can
// reclaim (created with hotplug_size).
func (m *Manager) BalloonGuests(ctx context.Context) ([]resources.BalloonGuest, error) {
	var out []resources.BalloonGuest
	for _, e := range m.allEntries() {
		e.mu.Lock()
		meta, live := e.meta, e.live != nil
		e.mu.Unlock()
		if !live || meta.Limits.HotplugBytes == 0 {
			continue
		}
		out = append(out, resources.BalloonGuest{InstanceID: meta.ID, InstanceName: meta.Name, Hypervisor: meta.Hypervisor,
			AssignedBytes: meta.MemoryBytes + meta.Limits.HotplugBytes, FloorBytes: meta.MemoryBytes})
	}
	return out, nil
}

// GuestMemory is the memory the balloon leaves a running guest, in bytes.
func (m *Manager) GuestMemory(ctx context.Context, id string) (int64, error) {
	e, err := m.resolve(id)
	if err != nil {
		return 0, err
	}
	e.mu.Lock()
	lv := e.live
	e.mu.Unlock()
	if lv == nil {
		return 0, fmt.Errorf("guest memory: %s is not running", id)
	}
	b, ok := lv.vm.(hypervisor.MemoryBalloon)
	if !ok {
		return 0, fmt.Errorf("guest memory: %w", hypervisor.ErrNoBalloon)
	}
	return b.MemoryActual(ctx)
}

// SetGuestMemoryTarget is SetMemoryTarget for the reclaimer.
func (m *Manager) SetGuestMemoryTarget(ctx context.Context, id string, target int64) error {
	err := m.SetMemoryTarget(ctx, id, target)
	var te *TransitionError
	if errors.As(err, &te) {
		return fmt.Errorf("set guest memory: %s is %s", id, te.State)
	}
	return err
}
