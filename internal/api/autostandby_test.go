package api

import (
	"context"
	"strings"
	"testing"
	"time"

	"hypeman/internal/autostandby"
	"hypeman/internal/instances/state"
)

// fakeAutoStandby records holds and answers a fixed countdown status.
type fakeAutoStandby struct {
	ref   string
	until time.Time
	d     time.Duration
}

func (f *fakeAutoStandby) InstanceStatus(_ context.Context, ref string) (autostandby.Status, error) {
	f.ref = ref
	idle, next := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 1, 1, 0, 0, 5, 0, time.UTC)
	timeout, rem := 5*time.Second, 3*time.Second
	return autostandby.Status{
		Supported: true, Configured: true, Enabled: true, Eligible: true,
		Status: autostandby.StatusIdleCountdown, Reason: autostandby.ReasonIdleTimeoutNotElapsed,
		IdleTimeout: &timeout, IdleSince: &idle, NextStandbyAt: &next, CountdownRemaining: &rem, TrackingMode: "fake",
	}, nil
}

func (f *fakeAutoStandby) HoldInstance(ctx context.Context, ref string, until time.Time, d time.Duration) (autostandby.Status, error) {
	f.until, f.d = until, d
	st, _ := f.InstanceStatus(ctx, ref)
	h := time.Date(2026, 1, 1, 1, 0, 0, 0, time.UTC)
	st.HoldUntil = &h
	return st, nil
}

func TestAutoStandbyStatusAndHoldRoutes(t *testing.T) {
	fa := &fakeAutoStandby{}
	e := newTestEnv(t, func(o *Options) { o.AutoStandby = fa })
	tok := mint(t)
	addInstance(e, "web", state.Running)
	addInstance(e, "idle", state.Standby)
	var st map[string]any
	jsonBody(t, e.do("GET", "/instances/web/auto-standby/status", tok, ""), &st)
	if st["status"] != "idle_countdown" || st["idle_timeout"] != "5s" || st["countdown_remaining"] != "3s" ||
		st["next_standby_at"] != "2026-01-01T00:00:05Z" || st["tracking_mode"] != "fake" || st["eligible"] != true {
		t.Fatalf("status %v", st)
	}
	jsonBody(t, e.do("POST", "/instances/web/auto-standby/hold", tok, `{"duration":"10m"}`), &st)
	if fa.d != 10*time.Minute || !fa.until.IsZero() || st["hold_until"] != "2026-01-01T01:00:00Z" {
		t.Fatalf("hold duration: d=%s until=%s body %v", fa.d, fa.until, st)
	}
	until := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	jsonBody(t, e.do("POST", "/instances/web/auto-standby/hold", tok, `{"hold_until":"`+until.Format(time.RFC3339)+`"}`), &st)
	if !fa.until.Equal(until) {
		t.Fatalf("hold_until passed as %s, want %s", fa.until, until)
	}
	for body, field := range map[string]string{
		`{"duration":"1ms"}`:                                    "duration",
		`{"duration":"soon"}`:                                   "duration",
		`{"hold_until":"2001-01-01T00:00:00Z"}`:                 "hold_until",
		`{"duration":"1m","hold_until":"2099-01-01T00:00:00Z"}`: "hold_until",
	} {
		code, msg := errBody(t, e.do("POST", "/instances/web/auto-standby/hold", tok, body))
		if code != "invalid_request" || !strings.Contains(msg, field) {
			t.Errorf("%s: %s %q", body, code, msg)
		}
	}
	resp := e.do("POST", "/instances/idle/auto-standby/hold", tok, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 409 || code != "instance_in_standby" {
		t.Fatalf("hold on standby: %d %s", resp.StatusCode, code)
	}
}
