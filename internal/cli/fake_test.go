package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

const testKey = "test-key"

// testNow is the fixed "now" of every test.
var testNow = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// request is what the fake server saw.
type request struct {
	Method string
	URI    string // RequestURI: escaped path + query
	Path   string // unescaped
	Query  url.Values
	Header http.Header
	Body   string
}

// fakeServer is an httptest server with per-test canned handlers. It
// enforces the Bearer key like hypemand and records every request.
type fakeServer struct {
	t   *testing.T
	mux *http.ServeMux
	srv *httptest.Server

	// registry, when set, serves /v2/ behind HTTP Basic auth (password =
	// the API key), like hypemand's built-in registry.
	registry http.Handler

	mu   sync.Mutex
	reqs []request
}

func newFake(t *testing.T) *fakeServer {
	t.Helper()
	f := &fakeServer{t: t, mux: http.NewServeMux()}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeServer) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	f.mu.Lock()
	f.reqs = append(f.reqs, request{
		Method: r.Method, URI: r.RequestURI, Path: r.URL.Path, Query: r.URL.Query(),
		Header: r.Header.Clone(), Body: string(body),
	})
	f.mu.Unlock()
	if f.registry != nil && (r.URL.Path == "/v2" || strings.HasPrefix(r.URL.Path, "/v2/")) {
		if _, pass, ok := r.BasicAuth(); !ok || pass != testKey {
			w.Header().Set("WWW-Authenticate", `Basic realm="hypeman"`)
			writeJSON(w, http.StatusUnauthorized, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		f.registry.ServeHTTP(w, r)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+testKey {
		writeJSON(w, http.StatusUnauthorized, `{"code":"unauthorized","message":"missing or invalid bearer token"}`)
		return
	}
	f.mux.ServeHTTP(w, r)
}

func (f *fakeServer) handle(pattern string, h http.HandlerFunc) { f.mux.HandleFunc(pattern, h) }

// requests returns the recorded requests matching method and path prefix.
func (f *fakeServer) requests(method, pathPrefix string) []request {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []request
	for _, r := range f.reqs {
		if r.Method == method && strings.HasPrefix(r.Path, pathPrefix) {
			out = append(out, r)
		}
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// result of one CLI run.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout ---\n%s--- stderr ---\n%s", r.code, r.stdout, r.stderr)
}

// testOptions are fast, deterministic options for a run against baseURL.
func testOptions(baseURL string, env map[string]string) (options, *bytes.Buffer, *bytes.Buffer) {
	var stdout, stderr bytes.Buffer
	e := map[string]string{"HYPEMAN_BASE_URL": baseURL, "HYPEMAN_API_KEY": testKey}
	for k, v := range env {
		e[k] = v
	}
	o := defaultOptions(strings.NewReader(""), &stdout, &stderr, func(k string) string { return e[k] })
	o.now = func() time.Time { return testNow }
	o.loc = time.UTC
	o.rand = rand.New(rand.NewPCG(1, 2))
	o.pollInterval = 2 * time.Millisecond
	o.reconnectMin, o.reconnectMax = time.Millisecond, 5*time.Millisecond
	o.progressTTY = false
	o.termWidth = 100
	o.importPatience = time.Second
	return o, &stdout, &stderr
}

// run runs the CLI against the fake server.
func (f *fakeServer) run(args ...string) result {
	f.t.Helper()
	o, _, _ := testOptions(f.srv.URL, nil)
	return runWith(f.t, context.Background(), o, args...)
}

func runWith(t *testing.T, ctx context.Context, o options, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	code := run(ctx, args, o)
	return result{code: code, stdout: o.stdout.(*bytes.Buffer).String(), stderr: o.stderr.(*bytes.Buffer).String()}
}

// mustJSON decodes a recorded JSON body.
func mustJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("body %q is not JSON: %v", s, err)
	}
	return m
}

// instanceJSON is a canned instance object.
func instanceJSON(id, name, state string, created time.Time, extra string) string {
	s := fmt.Sprintf(`{"id":%q,"name":%q,"image":"docker.io/library/busybox:latest","state":%q,"state_error":null,`+
		`"size":"1GB","vcpus":2,"overlay_size":"10GB","created_at":%q,"started_at":null,"stopped_at":null,`+
		`"exit_code":null,"exit_message":null,"has_snapshot":false,"hypervisor":"qemu"`,
		id, name, state, created.Format(time.RFC3339Nano))
	if extra != "" {
		s += "," + extra
	}
	return s + "}"
}
