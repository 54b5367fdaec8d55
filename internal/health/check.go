package health

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"hypeman/internal/durations"
)

// Type is the kind of health check.
type Type string

const (
	// HTTP: GET http://<guest>:Port/Path must answer ExpectedStatus.
	HTTP Type = "http"
	// TCP: a TCP connection to <guest>:Port must be accepted.
	TCP Type = "tcp"
	// Exec: Command run in the guest (through the agent) must exit 0.
	Exec Type = "exec"
)

// Defaults (issue 7).
const (
	DefaultInterval         = 10 * time.Second
	DefaultTimeout          = 2 * time.Second
	DefaultStartPeriod      = 30 * time.Second
	DefaultFailureThreshold = 3
	DefaultSuccessThreshold = 1
	DefaultExpectedStatus   = 200
	DefaultPath             = "/"
	DefaultScheme           = "http"
	// MinInterval protects the host (and the guest) from probe storms.
	MinInterval = time.Second
)

// ErrInvalid is matched (errors.Is) by every *FieldError.
var ErrInvalid = errors.New("invalid health check")

// FieldError names the offending field of a health check
// ("health_check.port", …). The API maps it to 400.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return fmt.Sprintf("invalid %s: %s", e.Field, e.Reason) }

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// FieldPrefix is the prefix of every FieldError.Field.
const FieldPrefix = "health_check."

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: FieldPrefix + field, Reason: fmt.Sprintf(format, args...)}
}

// Check is an instance's health check. The zero Check means none (health
// status "disabled"); IsZero reports it so a parent field tagged
// `json:",omitzero"` is omitted.
//
// JSON (snake_case, durations as Go duration strings; fields that do not
// apply to the type are omitted, and report_only when false):
//
//	{"type":"http","port":8080,"path":"/healthz","expected_status":200,
//	 "interval":"10s","timeout":"2s","start_period":"30s",
//	 "failure_threshold":3,"success_threshold":1,"report_only":true}
//	{"type":"tcp","port":5432,…}   {"type":"exec","command":["pg_isready"],…}
//
// Decoding starts from DefaultCheck(type), so absent fields get their
// defaults and explicit ones (including "0s") are kept for Validate.
type Check struct {
	Type Type
	// Port for http and tcp.
	Port int
	// Path for http (default "/").
	Path string
	// Scheme for http: "http" (default) or "https" (the guest's
	// certificate is not verified: it is the guest's own, self-issued).
	Scheme string
	// ExpectedStatus for http (default 200).
	ExpectedStatus int
	// Command for exec (argv, no shell).
	Command []string
	// WorkingDir for exec ("" = the instance's).
	WorkingDir string
	// Interval between the end of one check and the start of the next.
	Interval time.Duration
	// Timeout of one check (≤ Interval); a timeout is a failure.
	Timeout time.Duration
	// StartPeriod after boot during which failures do not count toward
	// unhealthy; the first success ends it early.
	StartPeriod time.Duration
	// FailureThreshold consecutive failures make the instance unhealthy.
	FailureThreshold int
	// SuccessThreshold consecutive successes make it healthy.
	SuccessThreshold int
	// ReportOnly checks run and the status is reported as usual, but an
	// unhealthy verdict is not reported to the Restarter: the instance is
	// never restarted for it (a readiness check).
	ReportOnly bool
}

// DefaultCheck returns a check of type t with every default filled in.
func DefaultCheck(t Type) Check {
	c := Check{
		Type: t, Interval: DefaultInterval, Timeout: DefaultTimeout, StartPeriod: DefaultStartPeriod,
		FailureThreshold: DefaultFailureThreshold, SuccessThreshold: DefaultSuccessThreshold,
	}
	if t == HTTP {
		c.Path, c.Scheme, c.ExpectedStatus = DefaultPath, DefaultScheme, DefaultExpectedStatus
	}
	return c
}

// IsZero reports whether no check is configured.
func (c Check) IsZero() bool {
	return c.Type == "" && c.Port == 0 && c.Path == "" && c.Scheme == "" && c.ExpectedStatus == 0 && len(c.Command) == 0 && c.WorkingDir == "" &&
		c.Interval == 0 && c.Timeout == 0 && c.StartPeriod == 0 && c.FailureThreshold == 0 && c.SuccessThreshold == 0 && !c.ReportOnly
}

// Equal reports whether two checks are the same.
func (c Check) Equal(d Check) bool {
	return c.Type == d.Type && c.Port == d.Port && c.Path == d.Path && c.Scheme == d.Scheme && c.ExpectedStatus == d.ExpectedStatus &&
		slices.Equal(c.Command, d.Command) && c.WorkingDir == d.WorkingDir && c.Interval == d.Interval && c.Timeout == d.Timeout &&
		c.StartPeriod == d.StartPeriod && c.FailureThreshold == d.FailureThreshold && c.SuccessThreshold == d.SuccessThreshold &&
		c.ReportOnly == d.ReportOnly
}

// Validate checks c; the zero Check (none) is valid. Failures are
// *FieldError.
func (c Check) Validate() error {
	if c.IsZero() {
		return nil
	}
	// Field names follow the API's nesting: health_check.http.port, ...
	sub := string(c.Type) + "."
	switch c.Type {
	case HTTP, TCP:
		if c.Port < 1 || c.Port > 65535 {
			return fieldErr(sub+"port", "must be between 1 and 65535 for a %s check, got %d", c.Type, c.Port)
		}
		if len(c.Command) > 0 || c.WorkingDir != "" {
			return fieldErr("exec", "only applies to exec checks")
		}
	case Exec:
		if len(c.Command) == 0 || strings.TrimSpace(c.Command[0]) == "" {
			return fieldErr("exec.command", "is required for an exec check (argv, e.g. [\"pg_isready\"])")
		}
		if c.WorkingDir != "" && !strings.HasPrefix(c.WorkingDir, "/") {
			return fieldErr("exec.working_dir", "must be an absolute path, got %q", c.WorkingDir)
		}
		if c.Port != 0 {
			return fieldErr("http", "only applies to http and tcp checks")
		}
	case "":
		return fieldErr("type", "is required (http, tcp or exec)")
	default:
		return fieldErr("type", "unknown type %q (want none, http, tcp or exec)", c.Type)
	}
	if c.Type == HTTP {
		if !strings.HasPrefix(c.Path, "/") {
			return fieldErr("http.path", "must start with /, got %q", c.Path)
		}
		if strings.ContainsAny(c.Path, " \t\r\n") {
			return fieldErr("http.path", "must not contain whitespace")
		}
		if c.Scheme != "" && c.Scheme != "http" && c.Scheme != "https" {
			return fieldErr("http.scheme", "must be http or https, got %q", c.Scheme)
		}
		if c.ExpectedStatus < 100 || c.ExpectedStatus > 599 {
			return fieldErr("http.expected_status", "must be an HTTP status between 100 and 599, got %d", c.ExpectedStatus)
		}
	} else if c.Path != "" || c.Scheme != "" || c.ExpectedStatus != 0 {
		return fieldErr("http", "only applies to http checks")
	}
	if c.Interval < MinInterval {
		return fieldErr("interval", "must be at least %s, got %s", MinInterval, durations.Format(c.Interval))
	}
	if c.Timeout <= 0 {
		return fieldErr("timeout", "must be a positive duration, got %s", durations.Format(c.Timeout))
	}
	if c.Timeout > c.Interval {
		return fieldErr("timeout", "must not exceed interval (%s), got %s", durations.Format(c.Interval), durations.Format(c.Timeout))
	}
	if c.StartPeriod < 0 {
		return fieldErr("start_period", "must not be negative, got %s", durations.Format(c.StartPeriod))
	}
	if c.FailureThreshold < 1 {
		return fieldErr("failure_threshold", "must be at least 1, got %d", c.FailureThreshold)
	}
	if c.SuccessThreshold < 1 {
		return fieldErr("success_threshold", "must be at least 1, got %d", c.SuccessThreshold)
	}
	return nil
}

type checkJSON struct {
	Type             Type     `json:"type"`
	Port             int      `json:"port,omitempty"`
	Path             string   `json:"path,omitempty"`
	Scheme           string   `json:"scheme,omitempty"`
	ExpectedStatus   int      `json:"expected_status,omitempty"`
	Command          []string `json:"command,omitempty"`
	WorkingDir       string   `json:"working_dir,omitempty"`
	Interval         string   `json:"interval"`
	Timeout          string   `json:"timeout"`
	StartPeriod      string   `json:"start_period"`
	FailureThreshold int      `json:"failure_threshold"`
	SuccessThreshold int      `json:"success_threshold"`
	ReportOnly       bool     `json:"report_only,omitempty"`
}

// MarshalJSON writes the check; durations as short Go duration strings.
func (c Check) MarshalJSON() ([]byte, error) {
	return json.Marshal(checkJSON{
		Type: c.Type, Port: c.Port, Path: c.Path, Scheme: c.Scheme, ExpectedStatus: c.ExpectedStatus, Command: c.Command, WorkingDir: c.WorkingDir,
		Interval: durations.Format(c.Interval), Timeout: durations.Format(c.Timeout), StartPeriod: durations.Format(c.StartPeriod),
		FailureThreshold: c.FailureThreshold, SuccessThreshold: c.SuccessThreshold, ReportOnly: c.ReportOnly,
	})
}

// UnmarshalJSON starts from DefaultCheck(type) and overrides the fields
// present. null, {} and {"type":""} alone decode to the zero Check (no
// check); other fields without a type fail. Wrongly typed fields fail with
// *FieldError. It does not call Validate.
func (c *Check) UnmarshalJSON(b []byte) error {
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		*c = Check{}
		return nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("health_check: %w", err)
	}
	var typ Type
	if v, ok := raw["type"]; ok {
		if err := json.Unmarshal(v, &typ); err != nil {
			return fieldErr("type", "must be a string (http, tcp or exec)")
		}
	}
	if typ == "" {
		for k, v := range raw {
			if k != "type" && string(v) != "null" {
				return fieldErr("type", "is required (http, tcp or exec)")
			}
		}
		*c = Check{}
		return nil
	}
	out := DefaultCheck(typ)
	ints := map[string]*int{"port": &out.Port, "expected_status": &out.ExpectedStatus,
		"failure_threshold": &out.FailureThreshold, "success_threshold": &out.SuccessThreshold}
	durs := map[string]*time.Duration{"interval": &out.Interval, "timeout": &out.Timeout, "start_period": &out.StartPeriod}
	for k, v := range raw {
		if string(v) == "null" {
			continue
		}
		switch {
		case k == "type":
		case k == "path" || k == "scheme" || k == "working_dir":
			dst := map[string]*string{"path": &out.Path, "scheme": &out.Scheme, "working_dir": &out.WorkingDir}[k]
			if err := json.Unmarshal(v, dst); err != nil {
				return fieldErr(k, "must be a string")
			}
		case k == "report_only":
			if err := json.Unmarshal(v, &out.ReportOnly); err != nil {
				return fieldErr(k, "must be a boolean")
			}
		case k == "command":
			if err := json.Unmarshal(v, &out.Command); err != nil {
				return fieldErr(k, "must be an array of strings")
			}
		case ints[k] != nil:
			if err := json.Unmarshal(v, ints[k]); err != nil {
				return fieldErr(k, "must be an integer")
			}
		case durs[k] != nil:
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return fieldErr(k, "must be a Go duration string (e.g. \"10s\")")
			}
			d, err := time.ParseDuration(s)
			if err != nil {
				return fieldErr(k, "%q is not a Go duration (e.g. 10s, 1m30s)", s)
			}
			*durs[k] = d
		}
	}
	*c = out
	return nil
}
