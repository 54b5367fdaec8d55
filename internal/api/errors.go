package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"syscall"

	"hypeman/internal/auth"
	"hypeman/internal/autostandby"
	"hypeman/internal/events"
	"hypeman/internal/expiry"
	"hypeman/internal/fsutil"
	"hypeman/internal/guest/agent"
	"hypeman/internal/health"
	"hypeman/internal/hypervisor"
	"hypeman/internal/images"
	"hypeman/internal/instances"
	"hypeman/internal/network/ingress"
	"hypeman/internal/resources"
	"hypeman/internal/restart"
	"hypeman/internal/schedules"
	"hypeman/internal/tags"
)

// Error codes (stable, snake_case; the `code` of every error body).
const (
	CodeInvalidRequest   = "invalid_request"
	CodeInvalidState     = "invalid_state"
	CodeInvalidTimeout   = "invalid_timeout"
	CodeUnauthorized     = "unauthorized"
	CodeForbidden        = "forbidden"
	CodeNotFound         = "not_found"
	CodeConflict         = "conflict"
	CodeImageNotReady    = "image_not_ready"
	CodeAgentUnavailable = "agent_unavailable"
	CodeTooLarge         = "request_too_large"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeInternal         = "internal"
	CodeBadGateway       = "bad_gateway"
	CodeTimeout          = "timeout"
	CodeRequestTimeout   = "request_timeout"
	CodeUnavailable      = "unavailable"
	CodeNotImplemented   = "not_implemented"
	// CodeInvalidPlatform: a platform that is not os/arch[/variant].
	CodeInvalidPlatform = "invalid_platform"
	// CodeUnsupportedPlatform: a well-formed platform this host cannot run.
	CodeUnsupportedPlatform = "unsupported_platform"
	// CodeUnsupported: a field this server cannot honour (the message says
	// which and why).
	CodeUnsupported = "unsupported"
	// CodeInstanceInStandby: the instance must be restored first.
	CodeInstanceInStandby = "instance_in_standby"
	// The host's limits, not the request's fault nor a server bug.
	CodeInsufficientStorage   = "insufficient_storage"
	CodeInsufficientResources = "insufficient_resources"
	// CodeUnsupportedFormat: stored data (an instance's metadata, a
	// snapshot record) is in a format version this build cannot read.
	CodeUnsupportedFormat = "unsupported_format"
)

// Error is an error with its HTTP status and code already decided. Handlers
// return it for conditions they detect themselves.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

func newError(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// classify maps an error from a manager (or this package) to a response.
func (s *server) classify(err error) (int, string, string) {
	var ae *Error
	if errors.As(err, &ae) {
		return ae.Status, ae.Code, ae.Message
	}
	msg := err.Error()
	var te *instances.TransitionError
	var mbe *http.MaxBytesError
	var re *agent.RemoteError
	var ve *fsutil.VersionError
	var ins *resources.InsufficientError
	switch {
	case errors.As(err, &ve):
		// Not a server fault that retrying fixes, not the request's either:
		// the data was written by a newer hypemand.
		return http.StatusConflict, CodeUnsupportedFormat, msg
	case errors.As(err, &te):
		return http.StatusConflict, CodeInvalidState, msg
	case errors.Is(err, instances.ErrNotFound), errors.Is(err, instances.ErrSnapshotNotFound), errors.Is(err, instances.ErrVolumeNotFound):
		return http.StatusNotFound, CodeNotFound, msg
	case errors.Is(err, instances.ErrAgentUnavailable):
		// 409, not 503: the instance is not (yet) in a state where the
		// agent answers; the client can wait for Running and retry.
		return http.StatusConflict, CodeAgentUnavailable, msg
	case errors.Is(err, schedules.ErrNotFound):
		return http.StatusNotFound, CodeNotFound, msg
	case errors.Is(err, expiry.ErrInvalid), errors.Is(err, schedules.ErrInvalid):
		return http.StatusBadRequest, CodeInvalidRequest, msg
	case errors.Is(err, expiry.ErrExpired):
		return http.StatusConflict, CodeConflict, msg
	case errors.Is(err, instances.ErrAmbiguous), errors.Is(err, instances.ErrNameInUse), errors.Is(err, instances.ErrVolumeInUse):
		return http.StatusConflict, CodeConflict, msg
	case errors.Is(err, instances.ErrInvalid), errors.Is(err, restart.ErrInvalid), errors.Is(err, health.ErrInvalid),
		errors.Is(err, autostandby.ErrInvalid),
		errors.Is(err, hypervisor.ErrInvalidCompression):
		// The restart and health errors name the field (restart_policy.backoff, …).
		return http.StatusBadRequest, CodeInvalidRequest, msg
	case errors.Is(err, instances.ErrImageNotReady):
		return http.StatusConflict, CodeImageNotReady, msg
	case errors.Is(err, instances.ErrPullNotAllowed):
		return http.StatusForbidden, CodeForbidden, msg + "; pulling it needs scope " + string(auth.ImageWrite) +
			": pull it first with POST /images (a token with image:write), then create the instance"
	case errors.Is(err, events.ErrInvalidTimeout):
		return http.StatusBadRequest, CodeInvalidTimeout, msg
	case errors.Is(err, events.ErrInvalidState):
		return http.StatusBadRequest, CodeInvalidState, msg
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, CodeTooLarge, fmt.Sprintf("request body larger than %d bytes", mbe.Limit)
	case errors.As(err, &re) && re.Code == agent.CodeNotFound:
		return http.StatusNotFound, CodeNotFound, msg
	case errors.As(err, &re) && re.Code == agent.CodeBadRequest:
		return http.StatusBadRequest, CodeInvalidRequest, msg
	case errors.As(err, &re) && re.Code == agent.CodeConflict:
		return http.StatusConflict, CodeConflict, msg
	case errors.Is(err, ingress.ErrInvalid), errors.As(err, new(*tags.FieldError)):
		return http.StatusBadRequest, CodeInvalidRequest, msg
	case errors.Is(err, ingress.ErrNotFound):
		return http.StatusNotFound, CodeNotFound, msg
	case errors.Is(err, ingress.ErrConflict), errors.Is(err, ingress.ErrListen):
		return http.StatusConflict, CodeConflict, msg
	}
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return http.StatusInsufficientStorage, CodeInsufficientStorage, "the host is out of disk space: " + msg
	case errors.As(err, &ins):
		return http.StatusConflict, CodeInsufficientResources, msg
	case errors.Is(err, resources.ErrInvalid):
		return http.StatusBadRequest, CodeInvalidRequest, msg
	case errors.Is(err, hypervisor.ErrHostResources):
		return http.StatusConflict, CodeInsufficientResources, msg + "; ask for less memory (size) or free some on the host"
	}
	if st, code, ok := classifyPushError(err); ok {
		return st, code, msg
	}
	if st, code, ok := classifyVolumeError(err); ok {
		return st, code, msg
	}
	if st, code, ok := classifyImageError(err); ok {
		return st, code, msg
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, CodeTimeout, msg
	case errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable, CodeUnavailable, msg
	}
	return http.StatusInternalServerError, CodeInternal, msg
}

// classifyImageError maps the image store's errors (directly, or wrapped by
// the instance manager when a create or start pulls). Registry-side
// failures are 502: the request was fine, an upstream was not.
func classifyImageError(err error) (int, string, bool) {
	switch {
	case errors.Is(err, images.ErrInvalidReference), errors.Is(err, images.ErrNoMatchingPlatform):
		return http.StatusBadRequest, CodeInvalidRequest, true
	case errors.Is(err, images.ErrNotReady):
		return http.StatusConflict, CodeImageNotReady, true
	case errors.Is(err, images.ErrPullInFlight), errors.Is(err, images.ErrNotCached):
		return http.StatusConflict, CodeConflict, true
	case errors.Is(err, images.ErrNotFound), errors.Is(err, images.ErrNotFoundUpstream):
		return http.StatusNotFound, CodeNotFound, true
	case errors.Is(err, images.ErrRegistryUnreachable), errors.Is(err, images.ErrUnauthorized),
		errors.Is(err, images.ErrRegistry), errors.Is(err, images.ErrDigestMismatch),
		errors.Is(err, images.ErrCorruptLayer):
		return http.StatusBadGateway, CodeBadGateway, true
	case errors.Is(err, images.ErrClosed), errors.Is(err, images.ErrInterrupted), errors.Is(err, instances.ErrClosed):
		return http.StatusServiceUnavailable, CodeUnavailable, true
	}
	return 0, "", false
}

// writeError writes the {code, message} body for err and logs server-side
// failures.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, code, msg := s.classify(err)
	if status >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	} else {
		s.log.Debug("request rejected", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	writeJSONError(w, status, code, msg)
}

// writeJSONError writes {code, message} with status.
func writeJSONError(w http.ResponseWriter, status int, code, message string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}{code, message})
}

// logger returns l or a discarding logger.
func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
