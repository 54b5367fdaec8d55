package api

// GET /resources and POST /resources/memory/reclaim: conversion between
// internal/resources and the API shapes (upstream hypeman 0.3.0).

import (
	"context"
	"net/http"

	"hypeman/internal/api/gen"
	"hypeman/internal/resources"
)

// ResourceLedger reports host capacity and allocations (resources.Ledger).
type ResourceLedger interface {
	Status(ctx context.Context) (*resources.Status, error)
}

// MemoryReclaimer runs guest memory reclaims (resources.Reclaimer).
type MemoryReclaimer interface {
	Reclaim(ctx context.Context, req resources.ReclaimRequest) (*resources.ReclaimResult, error)
}

var (
	_ ResourceLedger  = (*resources.Ledger)(nil)
	_ MemoryReclaimer = (*resources.Reclaimer)(nil)
)

func (s *server) GetResources(ctx context.Context, _ gen.GetResourcesRequestObject) (gen.GetResourcesResponseObject, error) {
	if s.opts.Resources == nil {
		return nil, newError(http.StatusNotImplemented, CodeNotImplemented, "host resource accounting: not implemented by this server configuration")
	}
	st, err := s.opts.Resources.Status(ctx)
	if err != nil {
		return nil, err
	}
	return gen.GetResources200JSONResponse(toAPIResources(st)), nil
}

func toAPIResources(st *resources.Status) gen.Resources {
	rs := func(k resources.Kind) gen.ResourceStatus {
		r := st.Resources[k]
		return gen.ResourceStatus{Type: string(k), Capacity: r.Capacity, EffectiveLimit: r.EffectiveLimit, Allocated: r.Allocated,
			Available: r.Available, OversubRatio: r.Ratio, Source: optString(r.Source)}
	}
	diskIO := rs(resources.DiskIO)
	d := st.Disk
	out := gen.Resources{
		Cpu: rs(resources.CPU), Memory: rs(resources.Memory), Disk: rs(resources.Disk), Network: rs(resources.Network), DiskIo: &diskIO,
		DiskBreakdown: &gen.DiskBreakdown{ImagesBytes: &d.ImagesBytes, OciCacheBytes: &d.OCICacheBytes, OverlaysBytes: &d.OverlaysBytes,
			VolumesBytes: &d.VolumesBytes, SnapshotsBytes: &d.SnapshotsBytes},
		Allocations: make([]gen.ResourceAllocation, 0, len(st.Allocations)),
	}
	for _, a := range st.Allocations {
		cpu := int(a.Amount(resources.CPU))
		mem, disk := a.Amount(resources.Memory), a.DiskBytes+a.VolumeBytes
		var down, up, io int64
		if a.Running {
			down, up, io = a.NetworkDownloadBps, a.NetworkUploadBps, a.DiskIOBps
		}
		out.Allocations = append(out.Allocations, gen.ResourceAllocation{
			InstanceId: &a.InstanceID, InstanceName: &a.InstanceName, Cpu: &cpu, MemoryBytes: &mem, DiskBytes: &disk,
			NetworkDownloadBps: &down, NetworkUploadBps: &up, DiskIoBps: &io,
		})
	}
	return out
}

func (s *server) ReclaimMemory(ctx context.Context, req gen.ReclaimMemoryRequestObject) (gen.ReclaimMemoryResponseObject, error) {
	if s.opts.Reclaimer == nil {
		return nil, newError(http.StatusNotImplemented, CodeNotImplemented, "memory reclaim: not implemented by this server configuration")
	}
	b := req.Body
	if b == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "a JSON body with reclaim_bytes is required")
	}
	if b.ReclaimBytes < 0 {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "reclaim_bytes must be >= 0")
	}
	hold, err := resources.ParseHoldFor(deref(b.HoldFor))
	if err != nil {
		return nil, err
	}
	res, err := s.opts.Reclaimer.Reclaim(ctx, resources.ReclaimRequest{ReclaimBytes: b.ReclaimBytes, HoldFor: hold,
		DryRun: deref(b.DryRun), Reason: deref(b.Reason)})
	if err != nil {
		return nil, err
	}
	out := gen.ReclaimMemory200JSONResponse{
		RequestedReclaimBytes: res.RequestedBytes, PlannedReclaimBytes: res.PlannedBytes, AppliedReclaimBytes: res.AppliedBytes,
		HoldUntil: res.HoldUntil, HostAvailableBytes: res.HostAvailableBytes,
		HostPressureState: gen.MemoryReclaimResponseHostPressureState(res.Pressure),
		Actions:           make([]gen.MemoryReclaimAction, 0, len(res.Actions)),
	}
	for _, a := range res.Actions {
		out.Actions = append(out.Actions, gen.MemoryReclaimAction{
			InstanceId: a.InstanceID, InstanceName: a.InstanceName, Hypervisor: gen.Hypervisor(a.Hypervisor),
			AssignedMemoryBytes: a.AssignedMemoryBytes, ProtectedFloorBytes: a.ProtectedFloorBytes,
			PreviousTargetGuestMemoryBytes: a.PreviousTargetBytes, PlannedTargetGuestMemoryBytes: a.PlannedTargetBytes,
			TargetGuestMemoryBytes: a.TargetBytes, AppliedReclaimBytes: a.AppliedBytes, Status: a.Status, Error: optString(a.Error),
		})
	}
	return out, nil
}
