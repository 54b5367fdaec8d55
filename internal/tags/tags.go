// Package tags owns user-defined key-value tags: the rules a tag set must
// follow and how a list filter matches it.
//
// Why a package of its own: instances, images, snapshots and ingresses all
// carry tags, and the API filters every list by them (`?tags[k]=v`). hypeman
// defines one rule set for all of them (at most 50 tags; keys 1-128 and
// values 0-256 characters of `A-Za-z0-9 _.:/=+@-`), so one place enforces it
// and one place decides what "matches" means.
package tags

import (
	"fmt"
	"maps"
)

// Limits of a tag set (hypeman's).
const (
	MaxTags     = 50
	MaxKeyLen   = 128
	MaxValueLen = 256
)

// FieldError names the offending tag; callers map it to 400.
type FieldError struct {
	Field  string // e.g. "tags" or "tags[team]"
	Reason string
}

func (e *FieldError) Error() string { return fmt.Sprintf("invalid %s: %s", e.Field, e.Reason) }

// Validate checks a tag set (nil and empty are valid). field is the name
// the error uses for the set ("tags", "metadata").
func Validate(field string, t map[string]string) error {
	if len(t) > MaxTags {
		return &FieldError{Field: field, Reason: fmt.Sprintf("at most %d tags, got %d", MaxTags, len(t))}
	}
	for k, v := range t {
		switch {
		case k == "" || len(k) > MaxKeyLen:
			return &FieldError{Field: field, Reason: fmt.Sprintf("tag key %q must be 1 to %d characters", k, MaxKeyLen)}
		case !allowed(k):
			return &FieldError{Field: field, Reason: fmt.Sprintf("tag key %q may only contain letters, digits, space and _.:/=+@-", k)}
		case len(v) > MaxValueLen:
			return &FieldError{Field: fmt.Sprintf("%s[%s]", field, k), Reason: fmt.Sprintf("value must be at most %d characters", MaxValueLen)}
		case !allowed(v):
			return &FieldError{Field: fmt.Sprintf("%s[%s]", field, k), Reason: "value may only contain letters, digits, space and _.:/=+@-"}
		}
	}
	return nil
}

func allowed(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == ' ', c == '_', c == '.', c == ':', c == '/', c == '=', c == '+', c == '@', c == '-':
		default:
			return false
		}
	}
	return true
}

// Match reports whether have carries every tag of want with the same value
// (an empty or nil filter matches everything).
func Match(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

// Clone returns a copy of t (nil for an empty set, so it is omitted).
func Clone(t map[string]string) map[string]string {
	if len(t) == 0 {
		return nil
	}
	return maps.Clone(t)
}
