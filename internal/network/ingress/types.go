package ingress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"

	"hypeman/internal/tags"
)

// Match selects requests: those arriving on host Port whose Host header is
// Hostname. An empty Hostname matches every host on the port that no other
// rule names (the port's catch-all). "*.example.com" matches exactly one
// label in front of example.com.
type Match struct {
	Hostname string `json:"hostname,omitempty"`
	// Port is the host port to listen on (default 80).
	Port int `json:"port,omitempty"`
}

// Target is where matching requests go: an HTTP server on Port of the
// instance (name or ID, resolved at request time).
type Target struct {
	Instance string `json:"instance"`
	Port     int    `json:"port"`
}

// Rule maps a Match to a Target.
type Rule struct {
	Match  Match  `json:"match"`
	Target Target `json:"target"`
	// RequestHeaderAuth, when set, lets through only requests carrying
	// Header with exactly Value (see rules.go).
	RequestHeaderAuth *HeaderAuth `json:"request_header_auth,omitempty"`
	// WakeStopped lets a request start the target when it is Stopped (a
	// Standby target is always woken when the daemon has a Waker). Our
	// addition to hypeman's rule; default false.
	WakeStopped bool `json:"wake_stopped,omitempty"`
}

// Ingress is a named set of rules.
type Ingress struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Tags      map[string]string `json:"tags,omitempty"`
	Rules     []Rule            `json:"rules"`
	CreatedAt time.Time         `json:"created_at"`
}

// CreateRequest is the body of POST /ingresses.
type CreateRequest struct {
	Name  string            `json:"name"`
	Tags  map[string]string `json:"tags,omitempty"`
	Rules []Rule            `json:"rules"`
}

// Resolver finds where an instance's port can be dialed right now.
//
// It is given the port, not only the instance, because the answer is not
// always guestIP:port: in user-mode networking a guest port is reachable
// only through a host forward. Returning an error (the instance does not
// exist, is not running, has no network) makes the proxy answer 502.
type Resolver interface {
	GuestAddr(ctx context.Context, instance string, port int) (addr string, err error)
}

// ResolverFunc adapts a function to Resolver.
type ResolverFunc func(ctx context.Context, instance string, port int) (string, error)

// GuestAddr calls f.
func (f ResolverFunc) GuestAddr(ctx context.Context, instance string, port int) (string, error) {
	return f(ctx, instance, port)
}

// Errors callers map to HTTP statuses: ErrInvalid 400 (the message names
// the field, e.g. rules[0].match.port), ErrNotFound 404, ErrConflict 409,
// ErrListen 409 (the host port cannot be bound).
var (
	ErrInvalid  = errors.New("invalid ingress")
	ErrNotFound = errors.New("ingress not found")
	ErrConflict = errors.New("ingress conflict")
	ErrListen   = errors.New("cannot listen on ingress port")
)

// DefaultPort is the host port of a rule that gives none.
const DefaultPort = 80

var (
	nameRE  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
)

// normalize validates req and returns its rules with defaults filled and
// hostnames in canonical form.
func normalize(req CreateRequest) ([]Rule, error) {
	if len(req.Name) > 63 || !nameRE.MatchString(req.Name) {
		return nil, fmt.Errorf("%w: name %q: use 1-63 lowercase letters, digits and '-', not starting or ending with '-'", ErrInvalid, req.Name)
	}
	if len(req.Rules) == 0 {
		return nil, fmt.Errorf("%w: at least one rule is required", ErrInvalid)
	}
	if err := tags.Validate("tags", req.Tags); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	out := make([]Rule, len(req.Rules))
	seen := map[routeKey]bool{}
	for i, r := range req.Rules {
		if r.Match.Port == 0 {
			r.Match.Port = DefaultPort
		}
		if r.Match.Port < 1 || r.Match.Port > 65535 {
			return nil, fmt.Errorf("%w: rules[%d].match.port: %d is out of range (1-65535)", ErrInvalid, i, r.Match.Port)
		}
		h, err := normalizeHostname(r.Match.Hostname)
		if err != nil {
			return nil, fmt.Errorf("%w: rules[%d].match.hostname: %v", ErrInvalid, i, err)
		}
		r.Match.Hostname = h
		r.Target.Instance = strings.TrimSpace(r.Target.Instance)
		if r.Target.Instance == "" || len(r.Target.Instance) > 256 {
			return nil, fmt.Errorf("%w: rules[%d].target.instance: give an instance name or ID (1-256 characters)", ErrInvalid, i)
		}
		if err := checkCaptureTarget(h, r.Target.Instance); err != nil {
			return nil, fmt.Errorf("%w: rule %d: %v", ErrInvalid, i, err)
		}
		if err := r.RequestHeaderAuth.validate(); err != nil {
			return nil, fmt.Errorf("%w: rule %d: request_header_auth: %v", ErrInvalid, i, err)
		}
		if r.Target.Port < 1 || r.Target.Port > 65535 {
			return nil, fmt.Errorf("%w: rules[%d].target.port: %d is out of range (1-65535)", ErrInvalid, i, r.Target.Port)
		}
		k := routeKey{r.Match.Port, routeHost(h)}
		if seen[k] {
			return nil, fmt.Errorf("%w: rules[%d]: an earlier rule already routes %s", ErrInvalid, i, k)
		}
		seen[k] = true
		out[i] = r
	}
	return out, nil
}

func normalizeHostname(h string) (string, error) {
	h = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(h)), ".")
	if h == "" {
		return "", nil
	}
	if len(h) > 253 {
		return "", fmt.Errorf("hostname %q too long", h)
	}
	rest := strings.TrimPrefix(h, "*.")
	if c, r, ok := splitCapture(h); ok {
		if !captureRE.MatchString(c) {
			return "", fmt.Errorf("hostname %q: capture name %q must be letters, digits and _", h, c)
		}
		rest = r
	}
	labels := strings.Split(rest, ".")
	if strings.ContainsAny(rest, "*{}") {
		return "", fmt.Errorf("hostname %q: a wildcard or {capture} is allowed only as a whole first label (*.example.com, {instance}.example.com)", h)
	}
	for _, l := range labels {
		if len(l) > 63 || !labelRE.MatchString(l) {
			return "", fmt.Errorf("hostname %q: invalid label %q", h, l)
		}
	}
	return h, nil
}

// requestHost is the routing form of a Host header: no port, lowercase, no
// trailing dot.
func requestHost(hostHeader string) string {
	h := hostHeader
	if host, _, err := net.SplitHostPort(hostHeader); err == nil {
		h = host
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

type routeKey struct {
	port int
	host string
}

func (k routeKey) String() string {
	if k.host == "" {
		return fmt.Sprintf("port %d (any host)", k.port)
	}
	return fmt.Sprintf("port %d host %s", k.port, k.host)
}
