package restart_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"hypeman/internal/restart"
)

func TestPolicyJSONDefaultsAndRoundTrip(t *testing.T) {
	var p restart.Policy
	if err := json.Unmarshal([]byte(`{"policy":"on_failure","max_attempts":5}`), &p); err != nil {
		t.Fatal(err)
	}
	want := restart.Policy{Policy: restart.OnFailure, Backoff: 5 * time.Second, MaxBackoff: 5 * time.Minute,
		MaxAttempts: 5, StableAfter: 10 * time.Minute}
	if p != want {
		t.Fatalf("decoded %+v, want %+v", p, want)
	}
	if err := p.Validate(); err != nil {
		t.Fatalf("defaulted policy invalid: %v", err)
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	const wantJSON = `{"policy":"on_failure","backoff":"5s","max_backoff":"5m","max_attempts":5,"stable_after":"10m"}`
	if string(b) != wantJSON {
		t.Fatalf("marshal = %s, want %s", b, wantJSON)
	}
	var back restart.Policy
	if err := json.Unmarshal(b, &back); err != nil || back != p {
		t.Fatalf("round trip = %+v, %v", back, err)
	}

	// Explicit values are kept, including odd ones Validate then rejects.
	if err := json.Unmarshal([]byte(`{"policy":"always","backoff":"1m30s","max_backoff":"1h","stable_after":"0s"}`), &p); err != nil {
		t.Fatal(err)
	}
	if p.Backoff != 90*time.Second || p.MaxBackoff != time.Hour || p.StableAfter != 0 {
		t.Fatalf("explicit values not kept: %+v", p)
	}
	b, _ = json.Marshal(p)
	if !strings.Contains(string(b), `"backoff":"1m30s"`) || !strings.Contains(string(b), `"max_backoff":"1h"`) {
		t.Fatalf("marshal = %s", b)
	}
}

func TestPolicyOmittedWhenNever(t *testing.T) {
	type inst struct {
		P restart.Policy `json:"restart_policy,omitzero"`
		S restart.Status `json:"restart_status,omitzero"`
	}
	b, _ := json.Marshal(inst{})
	if string(b) != `{}` {
		t.Fatalf("zero policy/status marshal = %s, want {}", b)
	}
	b, _ = json.Marshal(inst{P: restart.DefaultPolicy(restart.Never)})
	if string(b) != `{}` {
		t.Fatalf("never policy marshal = %s, want {}", b)
	}
	b, _ = json.Marshal(inst{P: restart.DefaultPolicy(restart.Always), S: restart.Status{Attempts: 1, LastReason: restart.ReasonExitCode}})
	if !strings.Contains(string(b), `"restart_policy":{"policy":"always"`) ||
		!strings.Contains(string(b), `"restart_status":{"attempts":1,"last_reason":"exit_code"}`) {
		t.Fatalf("marshal = %s", b)
	}
	var p restart.Policy
	if err := json.Unmarshal([]byte(`{}`), &p); err != nil || p.Kind() != restart.Never || !p.IsZero() || p.Validate() != nil {
		t.Fatalf("{} → %+v, %v", p, err)
	}
}

func TestPolicyValidate(t *testing.T) {
	ok := restart.DefaultPolicy(restart.OnFailure)
	cases := []struct {
		name  string
		mod   func(*restart.Policy)
		field string // "" = valid
	}{
		{"defaults", func(*restart.Policy) {}, ""},
		{"fixed delay", func(p *restart.Policy) { p.MaxBackoff = p.Backoff }, ""},
		{"unknown policy", func(p *restart.Policy) { p.Policy = "sometimes" }, "restart_policy.policy"},
		{"zero backoff", func(p *restart.Policy) { p.Backoff = 0 }, "restart_policy.backoff"},
		{"negative backoff", func(p *restart.Policy) { p.Backoff = -time.Second }, "restart_policy.backoff"},
		{"zero max_backoff", func(p *restart.Policy) { p.MaxBackoff = 0 }, "restart_policy.max_backoff"},
		{"max_backoff < backoff", func(p *restart.Policy) { p.Backoff, p.MaxBackoff = time.Minute, time.Second }, "restart_policy.max_backoff"},
		{"negative max_attempts", func(p *restart.Policy) { p.MaxAttempts = -1 }, "restart_policy.max_attempts"},
		{"zero stable_after", func(p *restart.Policy) { p.StableAfter = 0 }, "restart_policy.stable_after"},
		{"never with bad backoff", func(p *restart.Policy) { p.Policy, p.Backoff = restart.Never, -1 }, "restart_policy.backoff"},
	}
	for _, c := range cases {
		p := ok
		c.mod(&p)
		err := p.Validate()
		if c.field == "" {
			if err != nil {
				t.Errorf("%s: unexpected error %v", c.name, err)
			}
			continue
		}
		var fe *restart.FieldError
		if !errors.As(err, &fe) || fe.Field != c.field || !errors.Is(err, restart.ErrInvalid) {
			t.Errorf("%s: err = %v, want FieldError on %s", c.name, err, c.field)
		}
	}
	if err := (restart.Policy{}).Validate(); err != nil {
		t.Errorf("zero policy: %v", err)
	}
}

func TestPolicyUnmarshalErrorsNameTheField(t *testing.T) {
	for in, field := range map[string]string{
		`{"backoff":"5 seconds"}`:  "restart_policy.backoff",
		`{"max_backoff":5}`:        "restart_policy.max_backoff",
		`{"policy":1}`:             "", // wrong JSON type elsewhere: a plain decode error
		`{"stable_after":"soon"}`:  "restart_policy.stable_after",
		`{"max_attempts":"three"}`: "restart_policy.max_attempts",
	} {
		var p restart.Policy
		err := json.Unmarshal([]byte(in), &p)
		if err == nil {
			t.Errorf("%s: no error", in)
			continue
		}
		var fe *restart.FieldError
		if field != "" && (!errors.As(err, &fe) || fe.Field != field) {
			t.Errorf("%s: err = %v, want FieldError on %s", in, err, field)
		}
	}
}

func TestStatusHelpers(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	st := restart.Status{Restarts: 9, Attempts: 3, LastAttemptAt: now, NextAttemptAt: now.Add(time.Minute), LastReason: restart.ReasonExitCode}
	st.MarkManualStop()
	if st.BlockedReason != restart.BlockedManualStop || !st.NextAttemptAt.IsZero() || st.Attempts != 3 || st.Restarts != 9 {
		t.Fatalf("MarkManualStop → %+v", st)
	}
	st.ClearForStart()
	if st.BlockedReason != "" || st.Attempts != 0 || st.LastAttemptAt != now || st.LastReason != restart.ReasonExitCode || st.Restarts != 9 {
		t.Fatalf("ClearForStart → %+v", st)
	}
	if got := st.Cleared(); got != (restart.Status{Restarts: 9}) {
		t.Fatalf("Cleared → %+v, want only the lifetime count", got)
	}
	b, err := json.Marshal(restart.Status{Restarts: 2})
	if err != nil || string(b) != `{"restarts":2}` {
		t.Fatalf("JSON %s %v", b, err)
	}
	var back restart.Status
	if err := json.Unmarshal([]byte(`{"attempts":1}`), &back); err != nil || back.Restarts != 0 {
		t.Fatalf("status written before restarts existed: %+v %v", back, err)
	}
}

func TestPolicyChangeSemantics(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	a := restart.DefaultPolicy(restart.OnFailure)
	b := a
	b.MaxAttempts = 10
	running := restart.Status{Restarts: 6, Attempts: 4, LastAttemptAt: now, NextAttemptAt: now.Add(time.Minute), LastReason: restart.ReasonVMCrashed}

	if got := running.ForPolicyChange(a, a); got != running {
		t.Errorf("same policy changed the status: %+v", got)
	}
	// An empty kind equals never: not a change.
	if got := running.ForPolicyChange(restart.Policy{}, restart.DefaultPolicy(restart.Never)); got != running {
		t.Errorf("never → never changed the status: %+v", got)
	}
	got := running.ForPolicyChange(a, b)
	want := restart.Status{Restarts: 6, LastAttemptAt: now, LastReason: restart.ReasonVMCrashed}
	if got != want {
		t.Errorf("policy change: %+v, want %+v (attempts and schedule reset, history and restarts kept)", got, want)
	}
	blocked := running
	blocked.BlockedReason = restart.BlockedMaxAttempts
	if got := blocked.ForPolicyChange(a, b); got.BlockedReason != "" {
		t.Errorf("max_attempts_exceeded survived a policy change: %+v", got)
	}
	manual := running
	manual.MarkManualStop()
	if got := manual.ForPolicyChange(a, b); got.BlockedReason != restart.BlockedManualStop || got.Attempts != 0 {
		t.Errorf("manual_stop must survive a policy change, counters must not: %+v", got)
	}
}
