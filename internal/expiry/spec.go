package expiry

import (
	"errors"
	"fmt"
	"time"
)

// ErrInvalid is matched by every *FieldError (a 400 naming the field).
var ErrInvalid = errors.New("invalid expiry")

// ErrExpired: the instance's deadline has passed; it is being (or about to
// be) deleted and cannot be updated (409).
var ErrExpired = errors.New("instance has expired")

// FieldError is bad ttl / expires_at input.
type FieldError struct {
	Field, Reason string
}

func (e *FieldError) Error() string        { return e.Field + ": " + e.Reason }
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// MaxTTL bounds ttl so that now+ttl never overflows (100 years).
const MaxTTL = 100 * 365 * 24 * time.Hour

// Change is the result of reading ttl / expires_at from a request.
type Change struct {
	// Set: the request carried ttl or expires_at.
	Set bool
	// At is the new deadline; nil with Set turns expiry off ("0s").
	At *time.Time
}

// Resolve turns a request's ttl (a Go duration, relative to now) or
// expires_at (absolute, in the future) into a Change. The two are mutually
// exclusive; ttl "0s" disables expiry.
func Resolve(ttl *string, expiresAt *time.Time, now time.Time) (Change, error) {
	switch {
	case ttl != nil && expiresAt != nil:
		return Change{}, &FieldError{Field: "ttl", Reason: "ttl and expires_at are mutually exclusive; send one of them"}
	case ttl != nil:
		d, err := time.ParseDuration(*ttl)
		if err != nil {
			return Change{}, &FieldError{Field: "ttl", Reason: fmt.Sprintf("%q is not a Go duration (e.g. 24h, 90m); use \"0s\" to disable expiry", *ttl)}
		}
		if d < 0 {
			return Change{}, &FieldError{Field: "ttl", Reason: fmt.Sprintf("%q is negative; use a positive duration, or \"0s\" to disable expiry", *ttl)}
		}
		if d > MaxTTL {
			return Change{}, &FieldError{Field: "ttl", Reason: fmt.Sprintf("%q is longer than the maximum %s", *ttl, MaxTTL)}
		}
		if d == 0 {
			return Change{Set: true}, nil
		}
		at := now.Add(d).UTC()
		return Change{Set: true, At: &at}, nil
	case expiresAt != nil:
		if !expiresAt.After(now) {
			return Change{}, &FieldError{Field: "expires_at", Reason: fmt.Sprintf("%s is not in the future; send a later time, or ttl", expiresAt.UTC().Format(time.RFC3339))}
		}
		if expiresAt.Sub(now) > MaxTTL {
			return Change{}, &FieldError{Field: "expires_at", Reason: fmt.Sprintf("%s is more than %s away", expiresAt.UTC().Format(time.RFC3339), MaxTTL)}
		}
		at := expiresAt.UTC()
		return Change{Set: true, At: &at}, nil
	}
	return Change{}, nil
}
