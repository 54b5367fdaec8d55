package schedules

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"hypeman/internal/tags"
)

// MinInterval is the shortest schedule interval.
const MinInterval = time.Minute

// MaxNamePrefix is the longest name_prefix: with "-" and the 15-character
// timestamp a snapshot name stays within 63 characters.
const MaxNamePrefix = 47

// timestampLayout is the UTC time in scheduled snapshot names.
const timestampLayout = "20060102-150405"

var prefixRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// ErrInvalid is matched by every *FieldError (400 naming the field).
var ErrInvalid = errors.New("invalid snapshot schedule")

// ErrNotFound: the instance has no schedule (404).
var ErrNotFound = errors.New("snapshot schedule not found")

// FieldError is bad schedule input.
type FieldError struct{ Field, Reason string }

func (e *FieldError) Error() string        { return e.Field + ": " + e.Reason }
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// Retention says which of a schedule's snapshots are kept.
type Retention struct {
	// MaxCount keeps the newest N (0: no count limit).
	MaxCount int `json:"max_count,omitempty"`
	// MaxAge deletes snapshots older than this Go duration ("": none).
	MaxAge string `json:"max_age,omitempty"`
}

// Request is a PUT body after HTTP decoding.
type Request struct {
	Interval   string
	NamePrefix *string
	Metadata   map[string]string
	Retention  Retention
}

// Taken is one snapshot this schedule took.
type Taken struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"created_at"`
}

// Schedule is the persisted record (and the API view).
type Schedule struct {
	Version        int               `json:"version"`
	InstanceID     string            `json:"instance_id"`
	Interval       string            `json:"interval"`
	NamePrefix     *string           `json:"name_prefix,omitempty"`
	Metadata       map[string]string `json:"metadata,omitempty"`
	Retention      Retention         `json:"retention"`
	NextRunAt      time.Time         `json:"next_run_at"`
	LastRunAt      *time.Time        `json:"last_run_at,omitempty"`
	LastSnapshotID *string           `json:"last_snapshot_id,omitempty"`
	LastError      *string           `json:"last_error,omitempty"`
	CreatedAt      time.Time         `json:"created_at"`
	UpdatedAt      time.Time         `json:"updated_at"`
	// Taken lists the snapshots this schedule took and has not pruned,
	// oldest first (retention applies to these only).
	Taken []Taken `json:"taken,omitempty"`
}

// clone deep-copies s.
func (s *Schedule) clone() *Schedule {
	c := *s
	if s.NamePrefix != nil {
		p := *s.NamePrefix
		c.NamePrefix = &p
	}
	if s.Metadata != nil {
		c.Metadata = make(map[string]string, len(s.Metadata))
		for k, v := range s.Metadata {
			c.Metadata[k] = v
		}
	}
	c.Taken = append([]Taken(nil), s.Taken...)
	return &c
}

// interval parses s.Interval (validated on Set).
func (s *Schedule) interval() time.Duration {
	d, _ := time.ParseDuration(s.Interval)
	return max(d, MinInterval)
}

func (s *Schedule) maxAge() time.Duration {
	d, _ := time.ParseDuration(s.Retention.MaxAge)
	return d
}

// Validate checks a request; errors name the field and the fix.
func (r Request) Validate() error {
	if r.Interval == "" {
		return &FieldError{"interval", `is required: a Go duration of at least 1m, e.g. "1h"`}
	}
	d, err := time.ParseDuration(r.Interval)
	if err != nil {
		return &FieldError{"interval", fmt.Sprintf(`%q is not a Go duration; use e.g. "1h" or "24h"`, r.Interval)}
	}
	if d < MinInterval {
		return &FieldError{"interval", fmt.Sprintf("%q is shorter than the minimum 1m", r.Interval)}
	}
	if p := r.NamePrefix; p != nil && *p != "" {
		if len(*p) > MaxNamePrefix {
			return &FieldError{"name_prefix", fmt.Sprintf("is %d characters; the maximum is %d", len(*p), MaxNamePrefix)}
		}
		if !prefixRE.MatchString(*p) {
			return &FieldError{"name_prefix", fmt.Sprintf("%q: use lowercase letters, digits and dashes, not starting or ending with a dash", *p)}
		}
	}
	if err := tags.Validate("metadata", r.Metadata); err != nil {
		return err // a *tags.FieldError naming metadata
	}
	if r.Retention.MaxCount < 0 {
		return &FieldError{"retention.max_count", "must be 0 (no count limit) or more"}
	}
	if r.Retention.MaxAge != "" {
		a, err := time.ParseDuration(r.Retention.MaxAge)
		if err != nil {
			return &FieldError{"retention.max_age", fmt.Sprintf(`%q is not a Go duration; use e.g. "168h"`, r.Retention.MaxAge)}
		}
		if a <= 0 {
			return &FieldError{"retention.max_age", fmt.Sprintf("%q must be positive", r.Retention.MaxAge)}
		}
	}
	if r.Retention.MaxCount == 0 && r.Retention.MaxAge == "" {
		return &FieldError{"retention", "set max_count or max_age (or both): scheduled snapshots must be pruned"}
	}
	return nil
}

// snapshotName is <prefix>-<UTC timestamp>; the prefix defaults to the
// instance name (cut to MaxNamePrefix).
func snapshotName(prefix *string, instanceName string, at time.Time) string {
	p := instanceName
	if prefix != nil && *prefix != "" {
		p = *prefix
	}
	if len(p) > MaxNamePrefix {
		p = strings.TrimRight(p[:MaxNamePrefix], "-")
	}
	return p + "-" + at.UTC().Format(timestampLayout)
}
