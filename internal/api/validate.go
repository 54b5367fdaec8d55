package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	middleware "github.com/oapi-codegen/nethttp-middleware"

	"hypeman/internal/api/gen"
)

// requestValidator validates every API request against the embedded spec
// (parameters, body shape, sizes, unknown fields) before a handler runs, and
// answers violations with our error body. Authentication is not its job
// (authorize runs first), so its security check is a no-op. excludeBody
// leaves the body alone (streamed bodies are checked by their handler while
// it reads).
func (s *server) requestValidator(excludeBody bool) (func(http.Handler) http.Handler, error) {
	spec, err := gen.GetSpec()
	if err != nil {
		return nil, fmt.Errorf("api: load embedded spec: %w", err)
	}
	spec.Servers = nil // match any host
	return middleware.OapiRequestValidatorWithOptions(spec, &middleware.Options{
		Options: openapi3filter.Options{
			AuthenticationFunc: openapi3filter.NoopAuthenticationFunc,
			ExcludeRequestBody: excludeBody,
		},
		SilenceServersWarning: true,
		ErrorHandlerWithOpts: func(ctx context.Context, err error, w http.ResponseWriter, r *http.Request, o middleware.ErrorHandlerOpts) {
			s.writeError(w, r, validationError(err, o.StatusCode))
		},
	}), nil
}

// validationError turns a kin-openapi error into our Error. Everything that
// is not "no such route" is the client's fault: 400 (413 for an oversized
// body), never 500.
func validationError(err error, suggested int) *Error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return newError(http.StatusRequestEntityTooLarge, CodeTooLarge, "request body larger than %d bytes", mbe.Limit)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// The connection's body deadline (internal/httpserver) passed.
		return newError(http.StatusRequestTimeout, CodeRequestTimeout, "request body not received in time")
	}
	switch {
	case errors.Is(err, routers.ErrMethodNotAllowed):
		return newError(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "method not allowed")
	case errors.Is(err, routers.ErrPathNotFound) || suggested == http.StatusNotFound:
		return newError(http.StatusNotFound, CodeNotFound, "no such route")
	}
	var re *openapi3filter.RequestError
	if !errors.As(err, &re) {
		return newError(http.StatusBadRequest, CodeInvalidRequest, "%s", firstLine(err.Error()))
	}
	where := "request body"
	code := CodeInvalidRequest
	if re.Parameter != nil {
		where = fmt.Sprintf("%s parameter %q", re.Parameter.In, re.Parameter.Name)
		code = paramCode(re.Parameter.Name)
	}
	var se *openapi3.SchemaError
	if errors.As(re.Err, &se) {
		if ptr := strings.Join(se.JSONPointer(), "."); ptr != "" {
			if re.Parameter == nil {
				where = "field " + ptr
			} else {
				where += " item " + ptr
			}
		}
		return newError(http.StatusBadRequest, code, "invalid %s: %s", where, se.Reason)
	}
	reason := re.Reason
	if re.Err != nil {
		if cause := firstLine(re.Err.Error()); cause != reason {
			if reason != "" {
				reason += ": "
			}
			reason += cause
		}
	}
	if reason == "" {
		reason = firstLine(re.Error())
	}
	return newError(http.StatusBadRequest, code, "invalid %s: %s", where, reason)
}

// paramCode gives the parameters with a dedicated error code theirs.
func paramCode(name string) string {
	switch name {
	case "state":
		return CodeInvalidState
	case "timeout":
		return CodeInvalidTimeout
	}
	return CodeInvalidRequest
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// paramError answers parameter binding errors of the generated router (a
// second line of defence behind the validator).
func (s *server) paramError(w http.ResponseWriter, r *http.Request, err error) {
	code := CodeInvalidRequest
	var (
		f  *gen.InvalidParamFormatError
		rq *gen.RequiredParamError
		u  *gen.UnmarshalingParamError
		tm *gen.TooManyValuesForParamError
	)
	switch {
	case errors.As(err, &f):
		code = paramCode(f.ParamName)
	case errors.As(err, &rq):
		code = paramCode(rq.ParamName)
	case errors.As(err, &u):
		code = paramCode(u.ParamName)
	case errors.As(err, &tm):
		code = paramCode(tm.ParamName)
	}
	s.writeError(w, r, &Error{Status: http.StatusBadRequest, Code: code, Message: err.Error()})
}
