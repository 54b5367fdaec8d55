package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"hypeman/internal/auth"
	"hypeman/internal/resources"
)

type fakeReclaimer struct{ got []resources.ReclaimRequest }

func (f *fakeReclaimer) Reclaim(ctx context.Context, req resources.ReclaimRequest) (*resources.ReclaimResult, error) {
	f.got = append(f.got, req)
	until := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return &resources.ReclaimResult{RequestedBytes: req.ReclaimBytes, PlannedBytes: 256 << 20, AppliedBytes: 200 << 20, HoldUntil: &until,
		HostAvailableBytes: 8 << 30, Pressure: "healthy", Actions: []resources.ReclaimAction{{
			InstanceID: "i1", InstanceName: "web", Hypervisor: "qemu", AssignedMemoryBytes: 2 << 30, ProtectedFloorBytes: 1 << 30,
			PreviousTargetBytes: 2 << 30, PlannedTargetBytes: 1792 << 20, TargetBytes: 1792 << 20, AppliedBytes: 200 << 20, Status: "partial",
		}}}, nil
}

func resourcesEnv(t *testing.T) (*testEnv, *fakeReclaimer, *resources.Ledger) {
	t.Helper()
	led, err := resources.NewLedger(resources.Config{Host: resources.Host{
		resources.CPU: {Value: 2, Source: "detected"}, resources.Memory: {Value: 4 << 30, Source: "configured"},
		resources.Disk: {Value: 100 << 30, Source: "detected"}, resources.Network: {Value: 125_000_000, Source: "default"},
		resources.DiskIO: {Value: 1 << 30, Source: "default"}}})
	if err != nil {
		t.Fatal(err)
	}
	led.Hold(resources.Demand{InstanceID: "i1", InstanceName: "web", Running: true, CPU: 2, MemoryBytes: 3 << 30, DiskBytes: 10 << 30,
		NetworkDownloadBps: 1000, NetworkUploadBps: 2000, DiskIOBps: 5000})
	led.Hold(resources.Demand{InstanceID: "i2", InstanceName: "idle", CPU: 4, MemoryBytes: 1 << 30, DiskBytes: 5 << 30, DiskIOBps: 7})
	rec := &fakeReclaimer{}
	e := newTestEnv(t, func(o *Options) { o.Resources, o.Reclaimer = led, rec })
	return e, rec, led
}

func TestGetResourcesShape(t *testing.T) {
	e, _, _ := resourcesEnv(t)
	resp := e.do("GET", "/resources", mint(t, auth.ResourceRead), "")
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	mem := got["memory"].(map[string]any)
	if mem["type"] != "memory" || mem["capacity"] != float64(4<<30) || mem["effective_limit"] != float64(4<<30) ||
		mem["allocated"] != float64(3<<30) || mem["available"] != float64(1<<30) || mem["oversub_ratio"] != 1.0 || mem["source"] != "configured" {
		t.Errorf("memory %v", mem)
	}
	if cpu := got["cpu"].(map[string]any); cpu["effective_limit"] != float64(8) || cpu["allocated"] != float64(2) || cpu["oversub_ratio"] != 4.0 {
		t.Errorf("cpu %v", cpu)
	}
	if net := got["network"].(map[string]any); net["allocated"] != float64(2000) || net["effective_limit"] != float64(250_000_000) {
		t.Errorf("network %v", net)
	}
	if _, ok := got["disk_io"].(map[string]any); !ok {
		t.Error("no disk_io")
	}
	if bd, ok := got["disk_breakdown"].(map[string]any); !ok || bd["images_bytes"] != float64(0) {
		t.Errorf("disk_breakdown %v", got["disk_breakdown"])
	}
	allocs := got["allocations"].([]any)
	if len(allocs) != 2 {
		t.Fatalf("allocations %v", allocs)
	}
	// By name: idle (stopped: disk only) then web.
	idle, web := allocs[0].(map[string]any), allocs[1].(map[string]any)
	if idle["instance_name"] != "idle" || idle["cpu"] != float64(0) || idle["memory_bytes"] != float64(0) || idle["disk_bytes"] != float64(5<<30) || idle["disk_io_bps"] != float64(0) {
		t.Errorf("idle %v", idle)
	}
	if web["instance_id"] != "i1" || web["cpu"] != float64(2) || web["memory_bytes"] != float64(3<<30) || web["network_upload_bps"] != float64(2000) ||
		web["network_download_bps"] != float64(1000) || web["disk_io_bps"] != float64(5000) {
		t.Errorf("web %v", web)
	}
	if resp := e.do("GET", "/resources", mint(t, auth.InstanceRead), ""); resp.StatusCode != 403 {
		t.Errorf("without resource:read: %d", resp.StatusCode)
	}
}

func TestReclaimMemoryAPI(t *testing.T) {
	e, rec, _ := resourcesEnv(t)
	tok := mint(t, auth.ResourceWrite)
	resp := e.do("POST", "/resources/memory/reclaim", tok, `{"reclaim_bytes":268435456,"hold_for":"10m","dry_run":false,"reason":"pack"}`)
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	if len(rec.got) != 1 || rec.got[0] != (resources.ReclaimRequest{ReclaimBytes: 256 << 20, HoldFor: 10 * time.Minute, Reason: "pack"}) {
		t.Fatalf("request %+v", rec.got)
	}
	var got map[string]any
	json.Unmarshal(b, &got)
	for k, want := range map[string]any{"requested_reclaim_bytes": float64(256 << 20), "planned_reclaim_bytes": float64(256 << 20),
		"applied_reclaim_bytes": float64(200 << 20), "host_available_bytes": float64(8 << 30), "host_pressure_state": "healthy",
		"hold_until": "2026-01-02T03:04:05Z"} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
	a := got["actions"].([]any)[0].(map[string]any)
	if a["instance_name"] != "web" || a["hypervisor"] != "qemu" || a["protected_floor_bytes"] != float64(1<<30) || a["status"] != "partial" ||
		a["previous_target_guest_memory_bytes"] != float64(2<<30) || a["target_guest_memory_bytes"] != float64(1792<<20) {
		t.Errorf("action %v", a)
	}
	if _, ok := a["error"]; ok {
		t.Errorf("empty error shown: %v", a)
	}
	// Default hold.
	e.do("POST", "/resources/memory/reclaim", tok, `{"reclaim_bytes":1}`).Body.Close()
	if rec.got[1].HoldFor != resources.DefaultHoldFor {
		t.Errorf("default hold %v", rec.got[1].HoldFor)
	}
	for _, bad := range []struct{ body, field string }{
		{`{"reclaim_bytes":1,"hold_for":"forever"}`, "hold_for"},
		{`{"reclaim_bytes":1,"hold_for":"48h"}`, "hold_for"},
		{`{"reclaim_bytes":1,"hold_for":"0s"}`, "hold_for"},
		{`{"reclaim_bytes":-5}`, "reclaim_bytes"},
		{`{"hold_for":"1m"}`, "reclaim_bytes"},
		{`{"reclaim_bytes":1,"bogus":true}`, "bogus"},
	} {
		resp := e.do("POST", "/resources/memory/reclaim", tok, bad.body)
		if code, msg := errBody(t, resp); resp.StatusCode != 400 || !strings.Contains(msg, bad.field) {
			t.Errorf("%s: %d %s %q", bad.body, resp.StatusCode, code, msg)
		}
	}
	if len(rec.got) != 2 {
		t.Errorf("bad requests reached the reclaimer: %d", len(rec.got))
	}
	if resp := e.do("POST", "/resources/memory/reclaim", mint(t, auth.ResourceRead), `{"reclaim_bytes":1}`); resp.StatusCode != 403 {
		t.Errorf("without resource:write: %d", resp.StatusCode)
	}
}

func TestInsufficientResourcesIs409(t *testing.T) {
	e := newTestEnv(t, nil)
	e.inst.errOn["Create"] = &resources.InsufficientError{Resource: resources.Memory, Asked: 8 << 30, Free: 3 << 30, Limit: 22 << 30,
		Capacity: 22 << 30, Ratio: 1}
	resp := e.do("POST", "/instances", mint(t), `{"name":"big","image":"alpine"}`)
	code, msg := errBody(t, resp)
	if resp.StatusCode != http.StatusConflict || code != "insufficient_resources" ||
		!strings.Contains(msg, "asked 8.0 GiB, 3.0 GiB free of 22.0 GiB") || !strings.Contains(msg, "oversub_memory") {
		t.Fatalf("%d %s %q", resp.StatusCode, code, msg)
	}
}
