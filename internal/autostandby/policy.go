package autostandby

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// MinIdleTimeout is the shortest idle_timeout accepted (the observer polls
// about once a second, so a shorter one would not be honoured).
const MinIdleTimeout = time.Second

// MaxIdleTimeout bounds idle_timeout (a longer one is a mistake, not a policy).
const MaxIdleTimeout = 30 * 24 * time.Hour

// DefaultIdleTimeout applies when an enabled policy names none (hypeman's
// example value).
const DefaultIdleTimeout = 5 * time.Minute

// ErrInvalid is matched (errors.Is) by every *FieldError.
var ErrInvalid = errors.New("invalid auto_standby policy")

// FieldError names the offending field of a policy (e.g.
// auto_standby.idle_timeout).
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return fmt.Sprintf("invalid %s: %s", e.Field, e.Reason) }

// Is makes errors.Is(err, ErrInvalid) true.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// Policy is an instance's auto_standby setting, as sent by the API and
// persisted in its metadata. The zero value is "no policy".
type Policy struct {
	// Configured marks a policy that was set, even if it only says
	// enabled: false (status disabled/policy_disabled rather than
	// policy_missing).
	Configured bool `json:"configured,omitempty"`
	Enabled    bool `json:"enabled"`
	// IdleTimeout is a Go duration string; "" means DefaultIdleTimeout.
	IdleTimeout            string   `json:"idle_timeout,omitempty"`
	IgnoreSourceCIDRs      []string `json:"ignore_source_cidrs,omitempty"`
	IgnoreDestinationPorts []int    `json:"ignore_destination_ports,omitempty"`
}

// IsZero reports whether no policy is configured.
func (p Policy) IsZero() bool {
	return !p.Configured && !p.Enabled && p.IdleTimeout == "" && len(p.IgnoreSourceCIDRs) == 0 && len(p.IgnoreDestinationPorts) == 0
}

// Validate checks every field; the error names the field and the fix.
func (p Policy) Validate() error {
	if p.IdleTimeout != "" {
		d, err := time.ParseDuration(p.IdleTimeout)
		if err != nil {
			return &FieldError{"auto_standby.idle_timeout", fmt.Sprintf("%q is not a Go duration (e.g. 5m, 30s)", p.IdleTimeout)}
		}
		if d < MinIdleTimeout || d > MaxIdleTimeout {
			return &FieldError{"auto_standby.idle_timeout", fmt.Sprintf("%s is out of range; use %s to %s", d, MinIdleTimeout, MaxIdleTimeout)}
		}
	}
	for i, c := range p.IgnoreSourceCIDRs {
		if _, err := netip.ParsePrefix(c); err != nil {
			return &FieldError{fmt.Sprintf("auto_standby.ignore_source_cidrs[%d]", i), fmt.Sprintf("%q is not a CIDR (e.g. 10.0.0.0/8)", c)}
		}
	}
	for i, port := range p.IgnoreDestinationPorts {
		if port < 1 || port > 65535 {
			return &FieldError{fmt.Sprintf("auto_standby.ignore_destination_ports[%d]", i), fmt.Sprintf("%d is not a TCP port (1-65535)", port)}
		}
	}
	return nil
}

// Timeout is the idle timeout in effect (call on a validated policy).
func (p Policy) Timeout() time.Duration {
	if d, err := time.ParseDuration(p.IdleTimeout); err == nil && d > 0 {
		return d
	}
	return DefaultIdleTimeout
}

// filter is a validated policy's ignore lists, ready to match.
type filter struct {
	cidrs []netip.Prefix
	ports []int
}

func (p Policy) filter() filter {
	f := filter{ports: p.IgnoreDestinationPorts}
	for _, c := range p.IgnoreSourceCIDRs {
		if pf, err := netip.ParsePrefix(c); err == nil {
			f.cidrs = append(f.cidrs, pf.Masked())
		}
	}
	return f
}

// qualifies reports whether c keeps the instance awake under the ignore lists.
func (f filter) qualifies(c Conn) bool {
	if slices.Contains(f.ports, int(c.DstPort)) {
		return false
	}
	src := c.Src.Unmap()
	for _, pf := range f.cidrs {
		if pf.Contains(src) {
			return false
		}
	}
	return true
}
