package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/expiry"
	"hypeman/internal/instances"
	"hypeman/internal/schedules"
)

func TestCreateAndPatchExpiry(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	e := newTestEnv(t, func(o *Options) { o.Now = func() time.Time { return now } })
	tok := mint(t)
	// auth checks token expiry against Now: mint a token valid then.
	resp := e.do("POST", "/instances", tok, `{"name":"web","image":"busybox","ttl":"90m"}`)
	if resp.StatusCode != 201 {
		code, msg := errBody(t, resp)
		t.Fatalf("create with ttl: %d %s %s", resp.StatusCode, code, msg)
	}
	var got struct {
		ExpiresAt *time.Time `json:"expires_at"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	want := now.Add(90 * time.Minute)
	if got.ExpiresAt == nil || !got.ExpiresAt.Equal(want) {
		t.Fatalf("expires_at %v, want %s", got.ExpiresAt, want)
	}
	if p := e.inst.created[0]; p.ExpiresAt == nil || !p.ExpiresAt.Equal(want) {
		t.Fatalf("manager got ExpiresAt %v", p.ExpiresAt)
	}

	// PATCH ttl is relative to the update; "0s" clears.
	for body, wantAt := range map[string]*time.Time{`{"ttl":"2h"}`: ptrTo(now.Add(2 * time.Hour)), `{"ttl":"0s"}`: nil} {
		resp = e.do("PATCH", "/instances/web", tok, body)
		if resp.StatusCode != 200 {
			t.Fatalf("PATCH %s: %d", body, resp.StatusCode)
		}
		resp.Body.Close()
		p := e.inst.updated[len(e.inst.updated)-1]
		if !p.Expiry.Set || !p.Now.Equal(now) || (wantAt == nil) != (p.Expiry.At == nil) || (wantAt != nil && !p.Expiry.At.Equal(*wantAt)) {
			t.Fatalf("PATCH %s: params %+v", body, p)
		}
	}
	// An expired instance cannot be updated: 409.
	e.inst.mu.Lock()
	e.inst.errOn["Update"] = fmt.Errorf("%w at 2026-03-01T11:00:00Z and is being deleted", expiry.ErrExpired)
	e.inst.mu.Unlock()
	resp = e.do("PATCH", "/instances/web", tok, `{"ttl":"1h"}`)
	if code, msg := errBody(t, resp); resp.StatusCode != 409 || code != CodeConflict || !strings.Contains(msg, "expired") {
		t.Fatalf("PATCH expired: %d %s %q, want 409 conflict", resp.StatusCode, code, msg)
	}
}

// scheduleInstances adapts the fake manager for the schedules controller
// (the routes never take snapshots).
type scheduleInstances struct{ *fakeInstances }

func (scheduleInstances) CreateSnapshot(context.Context, string, instances.SnapshotParams) (*instances.Snapshot, error) {
	return nil, errors.New("not in this test")
}
func (scheduleInstances) DeleteSnapshot(context.Context, string) error {
	return errors.New("not in this test")
}

func TestSnapshotScheduleRoutes(t *testing.T) {
	var ctl *schedules.Controller
	e := newTestEnv(t, func(o *Options) {
		bus := events.New(events.Options{})
		t.Cleanup(bus.Close)
		var err error
		ctl, err = schedules.New(schedules.Config{Dir: t.TempDir(), Instances: scheduleInstances{o.Instances.(*fakeInstances)}, Events: bus})
		if err != nil {
			t.Fatal(err)
		}
		o.Schedules = ctl
	})
	tok := mint(t)
	if resp := e.do("POST", "/instances", tok, `{"name":"web","image":"busybox"}`); resp.StatusCode != 201 {
		t.Fatalf("create: %d", resp.StatusCode)
	}
	resp := e.do("GET", "/instances/web/snapshot-schedule", tok, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 404 || code != CodeNotFound {
		t.Fatalf("GET before PUT: %d %s", resp.StatusCode, code)
	}
	for body, field := range map[string]string{
		`{"interval":"30s","retention":{"max_count":1}}`:                          "interval",
		`{"interval":"1h","retention":{}}`:                                        "retention",
		`{"interval":"1h","retention":{"max_age":"soon"}}`:                        "retention.max_age",
		`{"interval":"1h","name_prefix":"Bad_","retention":{"max_count":1}}`:      "name_prefix",
		`{"interval":"1h","metadata":{"k":"\u0001"},"retention":{"max_count":1}}`: "metadata",
	} {
		resp := e.do("PUT", "/instances/web/snapshot-schedule", tok, body)
		if code, msg := errBody(t, resp); resp.StatusCode != 400 || !strings.Contains(msg, field) {
			t.Errorf("PUT %s: %d %s %q, want 400 naming %s", body, resp.StatusCode, code, msg, field)
		}
	}
	resp = e.do("PUT", "/instances/web/snapshot-schedule", tok, `{"interval":"1h","name_prefix":"nightly","metadata":{"team":"a"},"retention":{"max_count":2,"max_age":"48h"}}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("PUT: %d %s", resp.StatusCode, b)
	}
	var sc map[string]any
	if err := json.Unmarshal(b, &sc); err != nil {
		t.Fatal(err)
	}
	if sc["instance_id"] != "idweb" || sc["interval"] != "1h" || sc["name_prefix"] != "nightly" || sc["next_run_at"] == nil ||
		sc["retention"].(map[string]any)["max_count"] != float64(2) || sc["metadata"].(map[string]any)["team"] != "a" {
		t.Fatalf("PUT answer: %s", b)
	}
	if _, ok := sc["taken"]; ok {
		t.Fatalf("internal field leaked: %s", b)
	}
	if resp := e.do("GET", "/instances/idweb/snapshot-schedule", tok, ""); resp.StatusCode != 200 {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	if resp := e.do("DELETE", "/instances/web/snapshot-schedule", tok, ""); resp.StatusCode != 204 {
		t.Fatalf("DELETE: %d", resp.StatusCode)
	}
	if resp := e.do("DELETE", "/instances/web/snapshot-schedule", tok, ""); resp.StatusCode != 404 {
		t.Fatalf("DELETE again: %d", resp.StatusCode)
	}
	if resp := e.do("PUT", "/instances/nope/snapshot-schedule", tok, `{"interval":"1h","retention":{"max_count":1}}`); resp.StatusCode != 404 {
		t.Fatalf("PUT for a missing instance: %d", resp.StatusCode)
	}
}
