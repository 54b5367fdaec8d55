package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"hypeman/internal/auth"
	"hypeman/internal/images"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
)

// errBody decodes and checks the {code, message} shape.
func errBody(t *testing.T, resp *http.Response) (code, msg string) {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("error response content type %q, body %s", ct, b)
	}
	var e map[string]any
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("error body is not JSON: %s", b)
	}
	c, ok1 := e["code"].(string)
	m, ok2 := e["message"].(string)
	if !ok1 || !ok2 || c == "" || m == "" || len(e) != 2 {
		t.Fatalf("error body is not {code, message}: %s", b)
	}
	return c, m
}

func jsonBody(t *testing.T, resp *http.Response, v any) {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

func TestHealthAndSpecArePublic(t *testing.T) {
	e := newTestEnv(t, nil)
	resp := e.do("GET", "/health", "", "")
	var h map[string]string
	jsonBody(t, resp, &h)
	if resp.StatusCode != 200 || h["status"] != "ok" {
		t.Fatalf("health: %d %v", resp.StatusCode, h)
	}
	resp = e.do("GET", "/spec.json", "", "")
	var spec map[string]any
	jsonBody(t, resp, &spec)
	if resp.StatusCode != 200 || spec["openapi"] != "3.0.3" || spec["paths"].(map[string]any)["/instances/{id}/wait"] == nil {
		t.Fatalf("spec.json: %d", resp.StatusCode)
	}
	resp = e.do("GET", "/spec.yaml", "", "")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var y map[string]any
	if err := yaml.Unmarshal(b, &y); err != nil || resp.StatusCode != 200 || y["paths"] == nil {
		t.Fatalf("spec.yaml: %d %v", resp.StatusCode, err)
	}
}

func TestAuthentication(t *testing.T) {
	e := newTestEnv(t, nil)
	expired, _ := auth.Mint(testSecret, auth.MintOptions{UserID: "u", TTL: time.Minute, Now: func() time.Time { return time.Now().Add(-time.Hour) }})
	other, _ := auth.Mint([]byte("some-other-secret-0123456789abcdefgh"), auth.MintOptions{UserID: "u", TTL: time.Hour})
	for name, tok := range map[string]string{"none": "", "garbage": "abc.def.ghi", "expired": expired, "other secret": other} {
		resp := e.do("GET", "/instances", tok, "")
		code, _ := errBody(t, resp)
		if resp.StatusCode != 401 || code != "unauthorized" || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: %d %s", name, resp.StatusCode, code)
		}
	}
	// Basic auth is for the registry only.
	req, _ := http.NewRequest("GET", e.srv.URL+"/instances", nil)
	req.SetBasicAuth("x", mint(t))
	resp, _ := e.srv.Client().Do(req)
	if resp.StatusCode != 401 {
		t.Errorf("basic auth on the API: %d", resp.StatusCode)
	}
	resp.Body.Close()
	// Capabilities: any valid token, even one with no scopes.
	resp = e.do("GET", "/capabilities", mint(t, auth.ImageRead), "")
	var c map[string]any
	jsonBody(t, resp, &c)
	if resp.StatusCode != 200 || c["accelerator"] != "tcg" || c["server"].(map[string]any)["version"] != "test-1" ||
		c["server"].(map[string]any)["api_version"] != "0.3.0" || c["networking"].(map[string]any)["mode"] != "user" ||
		c["network"].(map[string]any)["model"] != "nat" || c["default_runtime"].(map[string]any)["name"] != "qemu-microvm" {
		t.Fatalf("capabilities: %d %v", resp.StatusCode, c)
	}
	var available []string
	for _, rt := range c["runtimes"].([]any) {
		if r := rt.(map[string]any); r["available"] == true {
			available = append(available, r["name"].(string))
		}
	}
	if len(available) != 1 || available[0] != "qemu-microvm" || len(c["runtimes"].([]any)) != 5 {
		t.Fatalf("runtimes %v", c["runtimes"])
	}
}

func TestScopes(t *testing.T) {
	e := newTestEnv(t, nil)
	body := `{"name":"web","image":"busybox"}`
	readOnly := mint(t, auth.InstanceRead, auth.ImageRead)
	resp := e.do("POST", "/instances", readOnly, body)
	code, msg := errBody(t, resp)
	if resp.StatusCode != 403 || code != "forbidden" || msg != "missing required scope: instance:write" {
		t.Fatalf("create without instance:write: %d %s %q", resp.StatusCode, code, msg)
	}
	if len(e.inst.created) != 0 {
		t.Fatal("forbidden create reached the manager")
	}
	if resp := e.do("GET", "/instances", readOnly, ""); resp.StatusCode != 200 {
		t.Fatalf("list with instance:read: %d", resp.StatusCode)
	}
	if resp := e.do("POST", "/instances", mint(t, "instance:*"), body); resp.StatusCode != 201 {
		t.Fatalf("create with instance:*: %d", resp.StatusCode)
	}
	resp = e.do("DELETE", "/instances/web", mint(t, auth.InstanceWrite), "")
	if code, _ := errBody(t, resp); resp.StatusCode != 403 || code != "forbidden" {
		t.Fatalf("delete without instance:delete: %d", resp.StatusCode)
	}
	// Empty permissions claim: nothing allowed but scope-less routes.
	noneTok, _ := auth.Mint(testSecret, auth.MintOptions{UserID: "u", Scopes: []auth.Scope{}, TTL: time.Hour})
	if resp := e.do("GET", "/images", noneTok, ""); resp.StatusCode != 403 {
		t.Fatalf("empty permissions: %d", resp.StatusCode)
	}
	// Full access without a permissions claim.
	if resp := e.do("DELETE", "/instances/web", mint(t), ""); resp.StatusCode != 204 {
		t.Fatalf("delete with full token: %d", resp.StatusCode)
	}
}

func TestInstanceHandlers(t *testing.T) {
	e := newTestEnv(t, nil)
	tok := mint(t)
	resp := e.do("POST", "/instances", tok, `{"name":"web","image":"busybox","size":"512MB","vcpus":1,"overlay_size":"1GB",
		"env":{"A":"1"},"entrypoint":["/bin/sh"],"cmd":["-c","sleep 1"],"tags":{"team":"x"},"skip_guest_agent":true}`)
	var in map[string]any
	jsonBody(t, resp, &in)
	if resp.StatusCode != 201 {
		t.Fatalf("create: %d %v", resp.StatusCode, in)
	}
	p := e.inst.created[0]
	if p.Name != "web" || p.Image != "busybox" || p.Size != "512MB" || p.VCPUs != 1 || p.OverlaySize != "1GB" ||
		p.Env["A"] != "1" || p.Entrypoint[0] != "/bin/sh" || p.Cmd[1] != "sleep 1" || p.Tags["team"] != "x" || !p.SkipGuestAgent {
		t.Fatalf("create params %+v", p)
	}
	// Required nullable fields are present as null, hypeman style.
	for _, k := range []string{"state_error", "started_at", "stopped_at", "exit_code", "expires_at"} {
		if v, ok := in[k]; !ok || v != nil {
			t.Errorf("%s = %v (present %v), want null", k, v, ok)
		}
	}
	if in["state"] != "Initializing" || in["id"] != "idweb" || in["created_at"] != "2025-01-02T03:04:05Z" || in["hypervisor"] != "qemu-microvm" ||
		in["current_phase"] != "initializing" || in["phase_durations_ms"] == nil {
		t.Fatalf("instance %v", in)
	}

	resp = e.do("GET", "/instances?state=Running", tok, "")
	var list []map[string]any
	jsonBody(t, resp, &list)
	if resp.StatusCode != 200 || len(list) != 0 {
		t.Fatalf("list Running: %d %v", resp.StatusCode, list)
	}
	resp = e.do("GET", "/instances?state=Initializing", tok, "")
	jsonBody(t, resp, &list)
	if len(list) != 1 {
		t.Fatalf("list Initializing: %v", list)
	}
	resp = e.do("GET", "/instances?state=running", tok, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 400 || code != "invalid_state" {
		t.Fatalf("list with lowercase state: %d %s", resp.StatusCode, code)
	}

	resp = e.do("POST", "/instances/web/stop", tok, "")
	jsonBody(t, resp, &in)
	if resp.StatusCode != 200 || in["state"] != "Stopped" || in["exit_code"] != float64(0) {
		t.Fatalf("stop: %d %v", resp.StatusCode, in)
	}
	resp = e.do("POST", "/instances/web/start", tok, "")
	jsonBody(t, resp, &in)
	if resp.StatusCode != 200 || in["state"] != "Initializing" {
		t.Fatalf("start: %d %v", resp.StatusCode, in)
	}
	resp = e.do("GET", "/instances/web/stats", tok, "")
	var st map[string]any
	jsonBody(t, resp, &st)
	if resp.StatusCode != 200 || st["pid"] != float64(42) || st["instance_id"] != "idweb" || st["cpu_seconds"] != 1.5 {
		t.Fatalf("stats: %d %v", resp.StatusCode, st)
	}
	resp = e.do("GET", "/instances/nope", tok, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 404 || code != "not_found" {
		t.Fatalf("get missing: %d %s", resp.StatusCode, code)
	}
	if resp := e.do("DELETE", "/instances/web", tok, ""); resp.StatusCode != 204 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	if resp := e.do("DELETE", "/instances/web", tok, ""); resp.StatusCode != 404 {
		t.Fatalf("delete again: %d", resp.StatusCode)
	}
}

// TestErrorMapping checks every manager error class maps to its status and
// code.
func TestErrorMapping(t *testing.T) {
	e := newTestEnv(t, nil)
	tok := mint(t)
	e.inst.add(&instances.Instance{ID: "abc", Name: "x", State: state.Running})
	cases := []struct {
		err    error
		status int
		code   string
	}{
		{&instances.TransitionError{Action: instances.ActionStart, State: state.Running, Allowed: instances.Allowed(state.Running)}, 409, "invalid_state"},
		{instances.ErrAmbiguous, 409, "conflict"},
		{instances.ErrNameInUse, 409, "conflict"},
		{&instances.InvalidArgumentError{Field: "size", Reason: "too big"}, 400, "invalid_request"},
		{instances.ErrImageNotReady, 409, "image_not_ready"},
		{&images.PullError{Ref: "x", Kind: images.ErrRegistryUnreachable}, 502, "bad_gateway"},
		{&images.PullError{Ref: "x", Kind: images.ErrNotFoundUpstream}, 404, "not_found"},
		{images.ErrInvalidReference, 400, "invalid_request"},
		{io.ErrUnexpectedEOF, 500, "internal"},
	}
	for _, c := range cases {
		e.inst.mu.Lock()
		e.inst.errOn["Start"] = c.err
		e.inst.mu.Unlock()
		resp := e.do("POST", "/instances/abc/start", tok, "")
		code, msg := errBody(t, resp)
		if resp.StatusCode != c.status || code != c.code {
			t.Errorf("%v: %d %s, want %d %s", c.err, resp.StatusCode, code, c.status, c.code)
		}
		if te, ok := c.err.(*instances.TransitionError); ok && !strings.Contains(msg, "allowed: stop") {
			t.Errorf("transition message %q lacks allowed actions (%v)", msg, te)
		}
	}
}

func TestPanicIsInternalError(t *testing.T) {
	e := newTestEnv(t, nil)
	e.inst.panicOnGet = true
	resp := e.do("GET", "/instances/x", mint(t), "")
	code, _ := errBody(t, resp)
	if resp.StatusCode != 500 || code != "internal" {
		t.Fatalf("panic: %d %s", resp.StatusCode, code)
	}
	// The server survives.
	if resp := e.do("GET", "/health", "", ""); resp.StatusCode != 200 {
		t.Fatalf("after panic: %d", resp.StatusCode)
	}
}

func TestUnknownRouteAndMethod(t *testing.T) {
	e := newTestEnv(t, nil)
	resp := e.do("GET", "/nope", mint(t), "")
	if code, _ := errBody(t, resp); resp.StatusCode != 404 || code != "not_found" {
		t.Fatalf("unknown route: %d", resp.StatusCode)
	}
	resp = e.do("PUT", "/instances", mint(t), "{}")
	if code, _ := errBody(t, resp); resp.StatusCode != 405 || code != "method_not_allowed" {
		t.Fatalf("wrong method: %d", resp.StatusCode)
	}
}

func TestStat(t *testing.T) {
	e := newTestEnv(t, nil)
	e.inst.add(&instances.Instance{ID: "abc", Name: "x", State: state.Running})
	resp := e.do("GET", "/instances/x/stat?path=/etc/passwd", mint(t), "")
	if code, _ := errBody(t, resp); resp.StatusCode != 501 || code != "not_implemented" {
		t.Fatalf("stat without agent: %d %s", resp.StatusCode, code)
	}
	e2 := newTestEnv(t, func(o *Options) { o.Stat = fakeStat{} })
	e2.inst.add(&instances.Instance{ID: "abc", Name: "x", State: state.Running})
	resp = e2.do("GET", "/instances/x/stat?path=/etc/passwd", mint(t), "")
	var pi map[string]any
	jsonBody(t, resp, &pi)
	if resp.StatusCode != 200 || pi["exists"] != true || pi["is_file"] != true || pi["mode"] != float64(0o644) || pi["size"] != float64(123) {
		t.Fatalf("stat: %d %v", resp.StatusCode, pi)
	}
	resp = e2.do("GET", "/instances/x/stat?path=/denied", mint(t), "")
	jsonBody(t, resp, &pi)
	if pi["error"] != "permission denied" {
		t.Fatalf("stat error: %v", pi)
	}
	resp = e2.do("GET", "/instances/x/stat", mint(t), "")
	if code, _ := errBody(t, resp); resp.StatusCode != 400 || code != "invalid_request" {
		t.Fatalf("stat without path: %d", resp.StatusCode)
	}
}

func TestImageHandlers(t *testing.T) {
	e := newTestEnv(t, nil)
	tok := mint(t)
	resp := e.do("POST", "/images", tok, `{"name":"alpine:3.20"}`)
	var img map[string]any
	jsonBody(t, resp, &img)
	if resp.StatusCode != 202 || img["name"] != "docker.io/library/alpine:3.20" || img["status"] != "pending" {
		t.Fatalf("create image: %d %v", resp.StatusCode, img)
	}
	// The name is a URL-encoded path parameter with slashes and a colon.
	resp = e.do("GET", "/images/docker.io%2Flibrary%2Falpine%3A3.20", tok, "")
	jsonBody(t, resp, &img)
	if resp.StatusCode != 200 || img["name"] != "docker.io/library/alpine:3.20" {
		t.Fatalf("get encoded: %d %v", resp.StatusCode, img)
	}
	resp = e.do("GET", "/images/alpine:3.20", tok, "")
	if resp.StatusCode != 200 {
		t.Fatalf("get short name: %d", resp.StatusCode)
	}
	resp.Body.Close()
	resp = e.do("GET", "/images", tok, "")
	var list []map[string]any
	jsonBody(t, resp, &list)
	if len(list) != 1 {
		t.Fatalf("list: %v", list)
	}
	resp = e.do("POST", "/images", tok, `{"name":"UPPER/Case::"}`)
	if code, _ := errBody(t, resp); resp.StatusCode != 400 || code != "invalid_request" {
		t.Fatalf("bad reference: %d %s", resp.StatusCode, code)
	}
	resp = e.do("GET", "/images/nope", tok, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 404 || code != "not_found" {
		t.Fatalf("missing image: %d", resp.StatusCode)
	}
	// In use → 409; unused → 204.
	e.inst.add(&instances.Instance{ID: "i1", Name: "web", Image: "alpine:3.20", State: state.Running})
	resp = e.do("DELETE", "/images/docker.io%2Flibrary%2Falpine%3A3.20", tok, "")
	code, msg := errBody(t, resp)
	if resp.StatusCode != 409 || code != "conflict" || !strings.Contains(msg, "web") {
		t.Fatalf("delete in use: %d %s %s", resp.StatusCode, code, msg)
	}
	e.inst.Delete(t.Context(), "i1")
	if resp := e.do("DELETE", "/images/alpine:3.20", tok, ""); resp.StatusCode != 204 || len(e.imgs.deleted) != 1 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
}

func TestBodyLimit(t *testing.T) {
	e := newTestEnv(t, func(o *Options) { o.MaxBodyBytes = 1024 })
	big := `{"name":"web","image":"busybox","env":{"A":"` + strings.Repeat("x", 4096) + `"}}`
	resp := e.do("POST", "/instances", mint(t), big)
	if code, _ := errBody(t, resp); resp.StatusCode != 413 || code != "request_too_large" {
		t.Fatalf("big body: %d %s", resp.StatusCode, code)
	}
}

// BenchmarkListInstances measures the API layer's own cost (routing, auth,
// validation, encoding) for a 200-instance list over a fake manager.
func BenchmarkListInstances(b *testing.B) {
	f := newFakeInstances()
	for i := range 200 {
		f.add(&instances.Instance{ID: fmt.Sprintf("id%03d", i), Name: fmt.Sprintf("vm-%d", i), Image: "busybox",
			State: state.Running, Size: "1GB", VCPUs: 2, OverlaySize: "10GB", Hypervisor: "qemu",
			Env: map[string]string{"A": "1"}, CreatedAt: time.Now()})
	}
	api, err := NewServer(Options{Instances: f, Images: newFakeImages(), Secret: testSecret})
	if err != nil {
		b.Fatal(err)
	}
	tok := mint(b)
	b.ReportAllocs()
	for b.Loop() {
		rec := serve(api, "GET", "/instances", tok, "", nil)
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}
