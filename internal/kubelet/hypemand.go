package kubelet

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// APIError is an error answer of hypemand: HTTP status and its {code,
// message} body.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("hypemand answered %d %s", e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("hypemand: %s (%d %s)", e.Message, e.Status, e.Code)
}

// UnreachableError is a request that got no answer from hypemand.
type UnreachableError struct{ Err error }

func (e *UnreachableError) Error() string { return "hypemand unreachable: " + e.Err.Error() }
func (e *UnreachableError) Unwrap() error { return e.Err }

// result turns a generated client call's outcome into an error: nil for a
// 2xx answer, *UnreachableError for no answer, *APIError otherwise.
func result(status int, body []byte, err error) error {
	if err != nil {
		return &UnreachableError{Err: err}
	}
	if status >= 200 && status < 300 {
		return nil
	}
	e := &APIError{Status: status}
	var b struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &b) == nil {
		e.Code, e.Message = b.Code, b.Message
	}
	return e
}

func isStatus(err error, status int) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == status
}

func isCode(err error, code string) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == code
}
