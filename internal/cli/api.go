package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
)

// APIError is an error response from the server: its HTTP status and the
// {code, message} body.
type APIError struct {
	Status  int
	Code    string
	Message string
	hint    string
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = fmt.Sprintf("server answered %d %s", e.Status, http.StatusText(e.Status))
	}
	if e.hint != "" {
		msg += " (" + e.hint + ")"
	}
	return msg
}

// ConnError means the server could not be reached at all.
type ConnError struct {
	BaseURL string
	Err     error
}

func (e *ConnError) Error() string {
	return fmt.Sprintf("cannot reach hypemand at %s: %v (is it running? set HYPEMAN_BASE_URL to point elsewhere)", e.BaseURL, e.Err)
}

func (e *ConnError) Unwrap() error { return e.Err }

func (a *app) apiKey() string { return strings.TrimSpace(a.env("HYPEMAN_API_KEY")) }

// serverURL is the validated base URL, without a trailing slash.
func (a *app) serverURL() (*url.URL, error) {
	raw := a.baseURL
	if raw == "" {
		raw = strings.TrimSpace(a.env("HYPEMAN_BASE_URL"))
	}
	if raw == "" {
		raw = DefaultBaseURL
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("invalid base URL %q: want http://host:port or https://host", raw)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawQuery, u.Fragment = "", ""
	return u, nil
}

func userAgent() string {
	v, _ := clientVersion()
	return "hypeman-cli/" + v
}

// api returns the generated client with auth and user agent applied.
func (a *app) api() (*client.ClientWithResponses, error) {
	u, err := a.serverURL()
	if err != nil {
		return nil, err
	}
	key := a.apiKey()
	ua := userAgent()
	// A trailing slash keeps a path prefix in the base URL: the generated
	// client resolves "./instances" against it.
	return client.NewClientWithResponses(u.String()+"/",
		client.WithHTTPClient(a.httpClient),
		client.WithRequestEditorFn(func(_ context.Context, req *http.Request) error {
			if key != "" {
				req.Header.Set("Authorization", "Bearer "+key)
			}
			req.Header.Set("User-Agent", ua)
			return nil
		}))
}

// response is what every generated *XxxResponse provides.
type response interface {
	StatusCode() int
	GetBody() []byte
	ContentType() string
}

// check turns a generated call's result into an error unless the status is
// want (and, for bodies, JSON).
func (a *app) check(ctx context.Context, r response, err error, want int) error {
	if err != nil {
		return a.transportError(ctx, err)
	}
	if r.StatusCode() != want {
		return a.apiError(r.StatusCode(), r.GetBody())
	}
	if want != http.StatusNoContent && !strings.Contains(r.ContentType(), "json") {
		return fmt.Errorf("server answered %d with %q, not JSON: is %s a hypemand?", want, r.ContentType(), a.describeServer())
	}
	return nil
}

// refCall is one generated call on one object named on the command line
// (GET, DELETE or a lifecycle POST by ID or name).
type refCall func(ctx context.Context, c *client.ClientWithResponses, ref string) (response, error)

// byRef adapts a method expression of the generated client, such as
// (*client.ClientWithResponses).StopInstanceWithResponse, to a refCall.
func byRef[R response](m func(*client.ClientWithResponses, context.Context, string, ...client.RequestEditorFn) (R, error)) refCall {
	return func(ctx context.Context, c *client.ClientWithResponses, ref string) (response, error) {
		return m(c, ctx, ref)
	}
}

// showRun is the RunE of a "get"/"inspect" command: the one object named,
// as indented JSON.
func (a *app) showRun(call refCall) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		c, err := a.api()
		if err != nil {
			return err
		}
		r, err := call(ctx, c, args[0])
		if err := a.check(ctx, r, err, http.StatusOK); err != nil {
			return err
		}
		return a.printPretty(r.GetBody())
	}
}

// eachRun is the RunE of a command acting on every object named: call
// answers want for each, then the name as given is printed (with --format
// json the body, when there is one). Failures are reported per object.
func (a *app) eachRun(call refCall, want int) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		c, err := a.api()
		if err != nil {
			return err
		}
		return a.each(ctx, args, func(ref string) error {
			r, err := call(ctx, c, ref)
			if err := a.check(ctx, r, err, want); err != nil {
				return err
			}
			if want == http.StatusNoContent {
				fmt.Fprintln(a.stdout, ref)
			} else {
				a.printCreated(ref, r.GetBody())
			}
			return nil
		})
	}
}

// listedAsJSON checks a list response and, with --format json, prints it as
// sent. done means the caller has nothing left to print.
func (a *app) listedAsJSON(ctx context.Context, r response, err error) (done bool, _ error) {
	if err := a.check(ctx, r, err, http.StatusOK); err != nil {
		return true, err
	}
	if a.jsonOutput() {
		a.printRaw(r.GetBody())
		return true, nil
	}
	return false, nil
}

func (a *app) describeServer() string {
	if u, err := a.serverURL(); err == nil {
		return u.String()
	}
	return "the base URL"
}

// transportError wraps a failure to talk to the server. Cancellation is
// returned as such so the exit code says "interrupted".
func (a *app) transportError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ue *url.Error
	var jse *json.SyntaxError
	var jte *json.UnmarshalTypeError
	switch {
	case errors.As(err, &jse), errors.As(err, &jte):
		return fmt.Errorf("server sent a response that does not match the API: %w", err)
	case errors.As(err, &ue):
		return &ConnError{BaseURL: a.describeServer(), Err: ue.Err}
	}
	return &ConnError{BaseURL: a.describeServer(), Err: err}
}

// apiError decodes a {code, message} body (or describes a body that is not
// one).
func (a *app) apiError(status int, body []byte) *APIError {
	e := &APIError{Status: status}
	var b struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &b) == nil && (b.Code != "" || b.Message != "") {
		e.Code, e.Message = b.Code, b.Message
	} else if text := strings.TrimSpace(string(body)); text != "" {
		if len(text) > 200 {
			text = text[:200] + "…"
		}
		e.Message = fmt.Sprintf("server answered %d %s: %s", status, http.StatusText(status), text)
	}
	if status == http.StatusUnauthorized {
		if a.apiKey() == "" {
			e.hint = "HYPEMAN_API_KEY is not set; mint a token with hypeman-token"
		} else {
			e.hint = "check HYPEMAN_API_KEY"
		}
	}
	return e
}

// streamResponse checks a raw (SSE) response: 200 with an event stream, or
// the error body.
func (a *app) streamResponse(ctx context.Context, resp *http.Response, err error) (*http.Response, error) {
	if err != nil {
		return nil, a.transportError(ctx, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return nil, a.apiError(resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		resp.Body.Close()
		return nil, fmt.Errorf("server answered with %q, not an event stream: is %s a hypemand?", ct, a.describeServer())
	}
	return resp, nil
}

func ptr[T any](v T) *T { return &v }

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
