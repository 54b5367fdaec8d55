package restart

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"hypeman/internal/durations"
)

// Kind is the restart policy name.
type Kind string

const (
	// Never: the instance is never restarted (the default).
	Never Kind = "never"
	// OnFailure restarts after a non-zero exit, a kill by signal (reported
	// by the guest as a non-zero code), a VM crash, a failed launch, or a
	// failed health check.
	OnFailure Kind = "on_failure"
	// Always restarts after any exit, including exit code 0.
	Always Kind = "always"
)

// Defaults (issue 7).
const (
	DefaultBackoff     = 5 * time.Second
	DefaultMaxBackoff  = 5 * time.Minute
	DefaultStableAfter = 10 * time.Minute
)

// ErrInvalid is matched (errors.Is) by every *FieldError.
var ErrInvalid = errors.New("invalid restart policy")

// FieldError names the offending field of a restart policy
// ("restart_policy.backoff", …). The API maps it to 400.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return fmt.Sprintf("invalid %s: %s", e.Field, e.Reason) }

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// FieldPrefix is the prefix of every FieldError.Field.
const FieldPrefix = "restart_policy."

// Policy is an instance's restart policy.
//
// JSON (snake_case, durations as Go duration strings):
//
//	{"policy":"on_failure","backoff":"5s","max_backoff":"5m","max_attempts":0,"stable_after":"10m"}
//
// Decoding starts from DefaultPolicy, so absent fields get their defaults
// while explicit values (including "0s") are kept for Validate to judge.
// The zero Policy means never; IsZero reports it so that a parent struct
// field tagged `json:",omitzero"` is omitted.
type Policy struct {
	Policy Kind
	// Backoff is the delay before the first restart of a series.
	Backoff time.Duration
	// MaxBackoff caps the doubling delay. MaxBackoff == Backoff gives a
	// fixed delay (hypeman's behaviour) without jitter.
	MaxBackoff time.Duration
	// MaxAttempts is the number of consecutive restarts allowed before the
	// instance is blocked (max_attempts_exceeded); 0 means unlimited.
	MaxAttempts int
	// StableAfter: a run that lasted at least this long resets the count of
	// consecutive attempts.
	StableAfter time.Duration
}

// DefaultPolicy returns kind with every other field at its default.
func DefaultPolicy(kind Kind) Policy {
	return Policy{Policy: kind, Backoff: DefaultBackoff, MaxBackoff: DefaultMaxBackoff, StableAfter: DefaultStableAfter}
}

// Kind returns the effective policy kind ("" is Never).
func (p Policy) Kind() Kind {
	if p.Policy == "" {
		return Never
	}
	return p.Policy
}

// IsZero reports whether the policy is never (nothing to show or store).
func (p Policy) IsZero() bool { return p.Kind() == Never }

// Equal reports whether p and q behave the same: two never policies are
// equal whatever their other fields (an empty Kind is never).
func (p Policy) Equal(q Policy) bool {
	p.Policy, q.Policy = p.Kind(), q.Kind()
	if p.Policy == Never && q.Policy == Never {
		return true
	}
	return p == q
}

// Validate checks the policy. A bare never policy (no other field set) is
// valid; anything else must be fully specified (DefaultPolicy fills the
// defaults): positive durations, MaxBackoff ≥ Backoff, MaxAttempts ≥ 0.
// Failures are *FieldError.
func (p Policy) Validate() error {
	switch p.Kind() {
	case Never, OnFailure, Always:
	default:
		return &FieldError{Field: FieldPrefix + "policy", Reason: fmt.Sprintf("unknown policy %q (want never, on_failure or always)", p.Policy)}
	}
	if p.Kind() == Never && p.Backoff == 0 && p.MaxBackoff == 0 && p.MaxAttempts == 0 && p.StableAfter == 0 {
		return nil
	}
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"backoff", p.Backoff}, {"max_backoff", p.MaxBackoff}, {"stable_after", p.StableAfter}} {
		if f.d <= 0 {
			return &FieldError{Field: FieldPrefix + f.name, Reason: fmt.Sprintf("must be a positive duration, got %s", durations.Format(f.d))}
		}
	}
	if p.MaxBackoff < p.Backoff {
		return &FieldError{Field: FieldPrefix + "max_backoff", Reason: fmt.Sprintf("must be at least backoff (%s), got %s", durations.Format(p.Backoff), durations.Format(p.MaxBackoff))}
	}
	if p.MaxAttempts < 0 {
		return &FieldError{Field: FieldPrefix + "max_attempts", Reason: fmt.Sprintf("must be 0 (unlimited) or more, got %d", p.MaxAttempts)}
	}
	return nil
}

type policyJSON struct {
	Policy      Kind   `json:"policy"`
	Backoff     string `json:"backoff"`
	MaxBackoff  string `json:"max_backoff"`
	MaxAttempts int    `json:"max_attempts"`
	StableAfter string `json:"stable_after"`
}

// MarshalJSON writes every field; durations as short Go duration strings
// ("5s", "5m", "1h30m").
func (p Policy) MarshalJSON() ([]byte, error) {
	return json.Marshal(policyJSON{
		Policy: p.Kind(), Backoff: durations.Format(p.Backoff), MaxBackoff: durations.Format(p.MaxBackoff),
		MaxAttempts: p.MaxAttempts, StableAfter: durations.Format(p.StableAfter),
	})
}

// UnmarshalJSON starts from DefaultPolicy and overrides the fields present.
// An absent policy means never. Unparsable durations fail with *FieldError.
// It does not call Validate.
func (p *Policy) UnmarshalJSON(b []byte) error {
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		return nil
	}
	var raw struct {
		Policy      *Kind           `json:"policy"`
		Backoff     json.RawMessage `json:"backoff"`
		MaxBackoff  json.RawMessage `json:"max_backoff"`
		MaxAttempts json.RawMessage `json:"max_attempts"`
		StableAfter json.RawMessage `json:"stable_after"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("restart_policy: %w", err)
	}
	out := DefaultPolicy(Never)
	if raw.Policy != nil {
		out.Policy = *raw.Policy
	}
	var err error
	if out.Backoff, err = parseDurationField("backoff", raw.Backoff, out.Backoff); err != nil {
		return err
	}
	if out.MaxBackoff, err = parseDurationField("max_backoff", raw.MaxBackoff, out.MaxBackoff); err != nil {
		return err
	}
	if out.StableAfter, err = parseDurationField("stable_after", raw.StableAfter, out.StableAfter); err != nil {
		return err
	}
	if len(raw.MaxAttempts) > 0 && string(raw.MaxAttempts) != "null" {
		if err := json.Unmarshal(raw.MaxAttempts, &out.MaxAttempts); err != nil {
			return &FieldError{Field: FieldPrefix + "max_attempts", Reason: "must be an integer"}
		}
	}
	*p = out
	return nil
}

func parseDurationField(name string, raw json.RawMessage, def time.Duration) (time.Duration, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return def, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return 0, &FieldError{Field: FieldPrefix + name, Reason: "must be a Go duration string (e.g. \"5s\", \"1m30s\")"}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, &FieldError{Field: FieldPrefix + name, Reason: fmt.Sprintf("%q is not a Go duration (e.g. 5s, 1m30s)", s)}
	}
	return d, nil
}
