package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"

	"hypeman/internal/events"
	"hypeman/internal/guest/agent"
	"hypeman/internal/hypervisor"
	"hypeman/internal/instances"
	"hypeman/internal/paths"
	"hypeman/internal/testutil/tier"
)

// newRealEnv serves the API over the real instance manager (with a
// hypervisor that never boots and images that never resolve), so the
// manager's own validation is part of what is tested.
func newRealEnv(t testing.TB) (*Server, string) {
	t.Helper()
	m := newRealManager(t)
	api, err := NewServer(Options{Instances: m, Images: newFakeImages(), Secret: testSecret,
		Lifecycle: m, Snapshots: m, Guest: m, Ingresses: &fakeIngresses{}})
	if err != nil {
		t.Fatal(err)
	}
	return api, mint(t)
}

// serve sends one request through the handler in-process.
func serve(h http.Handler, method, path, token, contentType string, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// checkErrorShape fails unless rec is a 4xx with {code, message}.
func checkErrorShape(t testing.TB, rec *httptest.ResponseRecorder) (string, string) {
	t.Helper()
	if rec.Code >= 500 || rec.Code < 400 {
		t.Fatalf("status %d, want 4xx; body %s", rec.Code, rec.Body)
	}
	var e map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
		t.Fatalf("error body not JSON: %q", rec.Body)
	}
	code, _ := e["code"].(string)
	msg, _ := e["message"].(string)
	if code == "" || msg == "" || len(e) != 2 {
		t.Fatalf("error body not {code, message}: %s", rec.Body)
	}
	return code, msg
}

// manyTags renders n distinct "kN":"v" JSON members.
func manyTags(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = fmt.Sprintf(`"k%d":"v"`, i)
	}
	return strings.Join(parts, ",")
}

func TestCreateBadInput(t *testing.T) {
	h, tok := newRealEnv(t)
	cases := []struct {
		name, body, ct string
		status         int
		code, inMsg    string
	}{
		{"malformed json", `{"name":"web",`, "application/json", 400, "invalid_request", ""},
		{"not an object", `[1,2]`, "application/json", 400, "invalid_request", ""},
		{"empty body", ``, "application/json", 400, "invalid_request", ""},
		{"null", `null`, "application/json", 400, "invalid_request", ""},
		{"wrong content type", `{"name":"web","image":"busybox"}`, "text/plain", 400, "invalid_request", ""},
		{"unknown field", `{"name":"web","image":"busybox","memory":"1GB"}`, "application/json", 400, "invalid_request", "memory"},
		{"missing name", `{"image":"busybox"}`, "application/json", 400, "invalid_request", "name"},
		{"missing image", `{"name":"web"}`, "application/json", 400, "invalid_request", "image"},
		{"uppercase name", `{"name":"Web","image":"busybox"}`, "application/json", 400, "invalid_request", "name"},
		{"name with dash at end", `{"name":"web-","image":"busybox"}`, "application/json", 400, "invalid_request", "name"},
		{"name too long", `{"name":"` + strings.Repeat("a", 64) + `","image":"busybox"}`, "application/json", 400, "invalid_request", "name"},
		{"name with slash", `{"name":"a/b","image":"busybox"}`, "application/json", 400, "invalid_request", "name"},
		{"name wrong type", `{"name":42,"image":"busybox"}`, "application/json", 400, "invalid_request", "name"},
		{"vcpus string", `{"name":"web","image":"busybox","vcpus":"2"}`, "application/json", 400, "invalid_request", "vcpus"},
		{"vcpus float", `{"name":"web","image":"busybox","vcpus":1.5}`, "application/json", 400, "invalid_request", "vcpus"},
		{"vcpus 2.0", `{"name":"web","image":"busybox","vcpus":2.0}`, "application/json", 400, "invalid_request", ""},
		{"vcpus huge", `{"name":"web","image":"busybox","vcpus":1e30}`, "application/json", 400, "invalid_request", "vcpus"},
		{"vcpus zero", `{"name":"web","image":"busybox","vcpus":0}`, "application/json", 400, "invalid_request", "vcpus"},
		{"vcpus negative", `{"name":"web","image":"busybox","vcpus":-1}`, "application/json", 400, "invalid_request", "vcpus"},
		{"size huge", `{"name":"web","image":"busybox","size":"99999999TB"}`, "application/json", 400, "invalid_request", "size"},
		{"size garbage", `{"name":"web","image":"busybox","size":"lots"}`, "application/json", 400, "invalid_request", "size"},
		{"size tiny", `{"name":"web","image":"busybox","size":"1KB"}`, "application/json", 400, "invalid_request", "size"},
		{"size number", `{"name":"web","image":"busybox","size":1073741824}`, "application/json", 400, "invalid_request", "size"},
		{"overlay huge", `{"name":"web","image":"busybox","overlay_size":"1e300GB"}`, "application/json", 400, "invalid_request", "overlay_size"},
		{"size NaN", `{"name":"web","image":"busybox","size":"NaN"}`, "application/json", 400, "invalid_request", "size"},
		{"env not map", `{"name":"web","image":"busybox","env":["A=1"]}`, "application/json", 400, "invalid_request", "env"},
		{"env value number", `{"name":"web","image":"busybox","env":{"A":1}}`, "application/json", 400, "invalid_request", "env"},
		{"env bad key", `{"name":"web","image":"busybox","env":{"A=B":"1"}}`, "application/json", 400, "invalid_request", "env"},
		{"cmd not array", `{"name":"web","image":"busybox","cmd":"sleep 1"}`, "application/json", 400, "invalid_request", "cmd"},
		{"skip agent string", `{"name":"web","image":"busybox","skip_guest_agent":"yes"}`, "application/json", 400, "invalid_request", "skip_guest_agent"},
		{"bad image ref", `{"name":"web","image":"UPPER::case"}`, "application/json", 400, "invalid_request", ""},
		// hypeman 0.3.0 fields
		{"platform grammar", `{"name":"web","image":"busybox","platform":"linux"}`, "application/json", 400, "invalid_platform", "platform"},
		{"platform other arch", `{"name":"web","image":"busybox","platform":"linux/s390x"}`, "application/json", 400, "unsupported_platform", "platform"},
		{"hypervisor unknown", `{"name":"web","image":"busybox","hypervisor":"kvmtool"}`, "application/json", 400, "invalid_request", "hypervisor"},
		{"hypervisor unavailable", `{"name":"web","image":"busybox","hypervisor":"vz"}`, "application/json", 400, "invalid_request", "hypervisor"},
		{"hotplug garbage", `{"name":"web","image":"busybox","hotplug_size":"lots"}`, "application/json", 400, "invalid_request", "hotplug_size"},
		{"hotplug number", `{"name":"web","image":"busybox","hotplug_size":3}`, "application/json", 400, "invalid_request", "hotplug_size"},
		{"disk io garbage", `{"name":"web","image":"busybox","disk_io_bps":"fast"}`, "application/json", 400, "invalid_request", "disk_io_bps"},
		{"bandwidth garbage", `{"name":"web","image":"busybox","network":{"bandwidth_download":"1 lightyear"}}`, "application/json", 400, "invalid_request", "bandwidth_download"},
		{"network unknown field", `{"name":"web","image":"busybox","network":{"mode":"host"}}`, "application/json", 400, "invalid_request", "mode"},
		{"egress mode", `{"name":"web","image":"busybox","network":{"egress":{"enforcement":{"mode":"some"}}}}`, "application/json", 400, "invalid_request", "mode"},
		{"egress enabled", `{"name":"web","image":"busybox","network":{"egress":{"enabled":true}}}`, "application/json", 400, "unsupported", "network.egress.enabled"},
		{"tags key charset", `{"name":"web","image":"busybox","tags":{"a$":"b"}}`, "application/json", 400, "invalid_request", "tags"},
		{"tags value charset", `{"name":"web","image":"busybox","tags":{"a":"b\u0000"}}`, "application/json", 400, "invalid_request", "tags"},
		{"tags too many", `{"name":"web","image":"busybox","tags":{` + manyTags(51) + `}}`, "application/json", 400, "invalid_request", "tags"},
		{"tags value number", `{"name":"web","image":"busybox","tags":{"a":1}}`, "application/json", 400, "invalid_request", "tags"},
		{"volumes wrong item", `{"name":"web","image":"busybox","volumes":[{"mount_path":"/x"}]}`, "application/json", 400, "invalid_request", "volume_id"},
		{"devices given", `{"name":"web","image":"busybox","devices":["gpu0"]}`, "application/json", 400, "unsupported", "devices"},
		{"gpu profile", `{"name":"web","image":"busybox","gpu":{"profile":"L40S-1Q"}}`, "application/json", 400, "unsupported", "gpu"},
		{"credentials given", `{"name":"web","image":"busybox","credentials":{"K":{"source":{"env":"R"},"inject":[]}}}`, "application/json", 400, "unsupported", "credentials"},
		{"working_dir relative", `{"name":"web","image":"busybox","working_dir":"app"}`, "application/json", 400, "invalid_request", "working_dir"},
		{"working_dir unclean", `{"name":"web","image":"busybox","working_dir":"/srv/../app/"}`, "application/json", 400, "invalid_request", "working_dir"},
		{"working_dir too long", `{"name":"web","image":"busybox","working_dir":"/` + strings.Repeat("d", 4096) + `"}`, "application/json", 400, "invalid_request", "working_dir"},
		{"working_dir number", `{"name":"web","image":"busybox","working_dir":42}`, "application/json", 400, "invalid_request", "working_dir"},
		{"ttl garbage", `{"name":"web","image":"busybox","ttl":"forever"}`, "application/json", 400, "invalid_request", "ttl"},
		{"ttl negative", `{"name":"web","image":"busybox","ttl":"-1h"}`, "application/json", 400, "invalid_request", "ttl"},
		{"ttl and expires_at", `{"name":"web","image":"busybox","ttl":"1h","expires_at":"2030-01-01T00:00:00Z"}`, "application/json", 400, "invalid_request", "mutually exclusive"},
		{"expires_at past", `{"name":"web","image":"busybox","expires_at":"2001-01-01T00:00:00Z"}`, "application/json", 400, "invalid_request", "expires_at"},
		{"expires_at not a time", `{"name":"web","image":"busybox","expires_at":"tomorrow"}`, "application/json", 400, "invalid_request", "expires_at"},
		{"auto_standby idle_timeout", `{"name":"web","image":"busybox","auto_standby":{"enabled":true,"idle_timeout":"100ms"}}`, "application/json", 400, "invalid_request", "auto_standby.idle_timeout"},
		{"auto_standby port", `{"name":"web","image":"busybox","auto_standby":{"ignore_destination_ports":[0]}}`, "application/json", 400, "invalid_request", "ignore_destination_ports"},
		{"snapshot policy algo", `{"name":"web","image":"busybox","snapshot_policy":{"compression":{"enabled":true,"algorithm":"gzip"}}}`, "application/json", 400, "invalid_request", "algorithm"},
		{"snapshot policy level", `{"name":"web","image":"busybox","snapshot_policy":{"compression":{"enabled":true,"level":20}}}`, "application/json", 400, "invalid_request", "level"},
		{"skip headers string", `{"name":"web","image":"busybox","skip_kernel_headers":"yes"}`, "application/json", 400, "invalid_request", "skip_kernel_headers"},
		{"image path traversal", `{"name":"web","image":"../../etc/passwd"}`, "application/json", 400, "invalid_request", "image"},
		{"image slash", `{"name":"web","image":"/"}`, "application/json", 400, "invalid_request", "image"},
		{"image empty component", `{"name":"web","image":"team//app"}`, "application/json", 400, "invalid_request", "empty path component"},
		{"image trailing slash", `{"name":"web","image":"team/app/"}`, "application/json", 400, "invalid_request", "image"},
		{"image dot component", `{"name":"web","image":"team/./app"}`, "application/json", 400, "invalid_request", "image"},
		{"trailing garbage", `{"name":"web","image":"busybox"}xyz`, "application/json", 400, "invalid_request", "after the JSON value"},
		{"two JSON values", `{"name":"web","image":"busybox"}{"name":"x"}`, "application/json", 400, "invalid_request", "after the JSON value"},
		{"latin1 charset", `{"name":"web","image":"busybox"}`, "application/json; charset=latin1", 415, "unsupported_media_type", "UTF-8"},
		{"utf-16 charset", `{"name":"web","image":"busybox"}`, "application/json; charset=utf-16", 415, "unsupported_media_type", "utf-16"},
		{"invalid utf-8 bytes", "{\"name\":\"web\",\"image\":\"busy\xffbox\"}", "application/json", 400, "invalid_request", "UTF-8"},
		{"utf-8 charset is fine", `{"name":"web","image":"busybox"}`, "application/json; charset=UTF-8", 404, "not_found", "image"},
		{"trailing whitespace is fine", "{\"name\":\"web\",\"image\":\"busybox\"} \n", "application/json", 404, "not_found", "image"},
		{"image not found", `{"name":"web","image":"busybox"}`, "application/json", 404, "not_found", "image"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := serve(h, "POST", "/instances", tok, c.ct, []byte(c.body))
			code, msg := checkErrorShape(t, rec)
			t.Logf("%d %s: %s", rec.Code, code, msg)
			if rec.Code != c.status || code != c.code || !strings.Contains(msg, c.inMsg) {
				t.Fatalf("%d %s %q, want %d %s containing %q", rec.Code, code, msg, c.status, c.code, c.inMsg)
			}
		})
	}
}

// TestCreateImageBadInput: image names that are not references, or that
// would name a host or a path they should not, are 400 naming `name`.
func TestCreateImageBadInput(t *testing.T) {
	h, tok := newRealEnv(t)
	for _, c := range []struct {
		body, inMsg string
		status      int
	}{
		{`{"name":"../../etc/passwd"}`, "invalid name", 400},
		{`{"name":"/"}`, "invalid name", 400},
		{`{"name":"a//b"}`, "empty path component", 400},
		{`{"name":"..:5000/x"}`, "invalid name", 400},
		{`{"name":"reg..example.com/x"}`, "not a valid host name", 400},
		{`{"name":"x:99999/y"}`, "invalid port", 400},
		{`{"name":"busybox"}garbage`, "after the JSON value", 400},
	} {
		rec := serve(h, "POST", "/images", tok, "application/json", []byte(c.body))
		code, msg := checkErrorShape(t, rec)
		if rec.Code != c.status || code != "invalid_request" || !strings.Contains(msg, c.inMsg) {
			t.Errorf("POST /images %s: %d %s %q, want %d containing %q", c.body, rec.Code, code, msg, c.status, c.inMsg)
		}
	}
}

func TestQueryAndPathBadInput(t *testing.T) {
	h, tok := newRealEnv(t)
	cases := []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/instances?state=bogus", 400, "invalid_state"},
		{"GET", "/instances/x/logs?tail=-1", 400, "invalid_request"},
		{"GET", "/instances/x/logs?tail=abc", 400, "invalid_request"},
		{"GET", "/instances/x/logs?tail=100001", 400, "invalid_request"},
		{"GET", "/instances/x/logs?follow=maybe", 400, "invalid_request"},
		{"GET", "/instances/x/logs?source=kernel", 400, "invalid_request"},
		{"GET", "/instances/x/logs", 404, "not_found"},
		{"GET", "/instances/x/wait", 400, "invalid_state"},
		{"GET", "/instances/x/wait?state=Unknown", 400, "invalid_state"},
		{"GET", "/instances/x/wait?state=running", 400, "invalid_state"},
		{"GET", "/instances/x/wait?state=Running&timeout=soon", 400, "invalid_timeout"},
		{"GET", "/instances/x/wait?state=Running&timeout=-5s", 400, "invalid_timeout"},
		{"GET", "/instances/x/wait?state=Running&timeout=0", 400, "invalid_timeout"},
		{"GET", "/instances/x/stat?path=", 400, "invalid_request"},
		{"GET", "/instances/" + strings.Repeat("x", 200), 400, "invalid_request"},
		{"GET", "/instances/%00", 404, "not_found"},
		{"GET", "/instances/..%2F..%2Fetc", 404, "not_found"},
		{"POST", "/instances/x/start", 404, "not_found"},
		{"DELETE", "/instances/x", 404, "not_found"},
		{"PATCH", "/instances/x", 400, "invalid_request"}, // no body
		{"PATCH", "/instances/" + strings.Repeat("x", 200), 400, "invalid_request"},
		{"PUT", "/instances/x", 405, "method_not_allowed"},
		{"GET", "/images/" + strings.Repeat("a", 600), 400, "invalid_request"},
		{"POST", "/instances/x/standby", 404, "not_found"},
		{"POST", "/instances/x/restore", 404, "not_found"},
		{"POST", "/instances/x/pause", 404, "not_found"},
		{"POST", "/instances/x/resume", 404, "not_found"},
		{"GET", "/instances/x/exec", 404, "not_found"},
		{"GET", "/instances/x/cp", 404, "not_found"},
		{"GET", "/instances/" + strings.Repeat("x", 200) + "/exec", 400, "invalid_request"},
		{"POST", "/instances/x/exec", 405, "method_not_allowed"},
		{"GET", "/snapshots?instance=", 400, "invalid_request"},
		{"GET", "/snapshots?instance=" + strings.Repeat("x", 200), 400, "invalid_request"},
		{"GET", "/snapshots/x", 404, "not_found"},
		{"GET", "/snapshots/..%2F..%2Fetc", 404, "not_found"},
		{"GET", "/snapshots/" + strings.Repeat("x", 200), 400, "invalid_request"},
		{"DELETE", "/snapshots/x", 404, "not_found"},
		{"POST", "/instances/x/snapshots/" + strings.Repeat("x", 200) + "/restore", 400, "invalid_request"},
		{"POST", "/instances/x/snapshots/y/restore", 404, "not_found"},
		{"GET", "/ingresses/x", 404, "not_found"},
		{"GET", "/ingresses/" + strings.Repeat("x", 200), 400, "invalid_request"},
		{"DELETE", "/ingresses/x", 404, "not_found"},
	}
	for _, c := range cases {
		rec := serve(h, c.method, c.path, tok, "", nil)
		code, msg := checkErrorShape(t, rec)
		t.Logf("%s %s: %d %s: %s", c.method, c.path, rec.Code, code, msg)
		if rec.Code != c.status || code != c.code {
			t.Errorf("%s %s: %d %s (%s), want %d %s", c.method, c.path, rec.Code, code, msg, c.status, c.code)
		}
	}
}

// FuzzCreateInstance: no body, however malformed, gets a 5xx or a body
// that is not {code, message}; valid ones end at the (unresolvable) image.
func FuzzCreateInstance(f *testing.F) {
	for _, s := range []string{
		`{"name":"web","image":"busybox"}`,
		`{"name":"web","image":"busybox","size":"512MB","vcpus":2,"overlay_size":"1GB"}`,
		`{"name":"web","image":"busybox","env":{"A":"1"},"tags":{"k":"v"},"cmd":["sh"],"entrypoint":[]}`,
		`{"name":"web","image":"busybox","size":"9999999999999999999TB"}`,
		`{"name":"web","image":"busybox","vcpus":1e400}`,
		`{"name":"","image":""}`,
		`{"name":"web","image":"busybox","extra":true}`,
		`{"name":"web","image":"busybox","env":{"":"x"}}`,
		`{"name":"a","image":"a","skip_guest_agent":true}`,
		`{"name":"web","image":"busybox"}{"x":1}`,
		`{"name":"web","image":"busybox","size":"1.5GiB"}`,
		`{"name":"web","image":"busybox","size":"-1GB"}`,
		`{"name":"\u0000","image":"\ud800"}`,
		`{"name":"web","image":"busybox","restart_policy":{"policy":"on_failure","backoff":"5s","max_backoff":"5m","max_attempts":3,"stable_after":"10m"}}`,
		`{"name":"web","image":"busybox","restart_policy":{"policy":"always","backoff":"-1ns"}}`,
		`{"name":"web","image":"busybox","health_check":{"type":"http","port":8080,"path":"/healthz","expected_status":204}}`,
		`{"name":"web","image":"busybox","health_check":{"type":"exec","command":["sh","-c","true"],"interval":"1s","timeout":"1s"}}`,
		`{"name":"web","image":"busybox","health_check":{"type":"tcp","port":65536}}`,
		`{"name":"web","image":"busybox","health_check":{},"network":{"enabled":false}}`,
		`{"name":"web","image":"busybox","health_check":{"type":"http","http":{"port":8080,"path":"/healthz","scheme":"https","expected_status":204}}}`,
		`{"name":"web","image":"busybox","health_check":{"type":"exec","exec":{"command":["true"],"working_dir":"/"}}}`,
		`{"name":"web","image":"busybox","health_check":{"type":"tcp","tcp":{"port":1},"http":{"port":2}}}`,
		`{"name":"web","image":"busybox","size":"1GB","hotplug_size":"3GB","overlay_size":"10GB","vcpus":2,"disk_io_bps":"100MB/s"}`,
		`{"name":"web","image":"busybox","network":{"enabled":true,"bandwidth_download":"1Gbps","bandwidth_upload":"125MB/s","egress":{"enabled":false,"enforcement":{"mode":"all"}}}}`,
		`{"name":"web","image":"busybox","platform":"linux/amd64","hypervisor":"qemu","tags":{"a b:c":"d/e=f+g@h-i"}}`,
		`{"name":"web","image":"busybox","snapshot_policy":{"compression":{"enabled":true,"algorithm":"lz4","level":9},"standby_compression_delay":"0s"}}`,
		`{"name":"web","image":"busybox","auto_standby":{"enabled":false,"idle_timeout":"5m","ignore_source_cidrs":["10.0.0.0/8"],"ignore_destination_ports":[22]}}`,
		`{"name":"web","image":"busybox","ttl":"0s","skip_kernel_headers":true,"devices":[],"volumes":[],"credentials":{}}`,
		`{"name":"web","image":"busybox","expires_at":"2030-01-01T00:00:00Z","gpu":{"profile":""}}`,
		`{`, `"`, `[]`, `null`, `0`, ``,
	} {
		f.Add([]byte(s))
	}
	h, tok := newRealEnv(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := serve(h, "POST", "/instances", tok, "application/json", body)
		if rec.Code == http.StatusCreated {
			t.Fatalf("created an instance from %q with an unresolvable image", body)
		}
		checkErrorShape(t, rec)
	})
}

// TestNewBodiesBadInput covers the request bodies of fork, snapshots and
// ingresses over the real manager: bad shapes are 400 from the spec, bad
// values the spec cannot express are 400 from the manager, and valid
// bodies for a missing instance or snapshot are 404.
func TestNewBodiesBadInput(t *testing.T) {
	h, tok := newRealEnv(t)
	cases := []struct {
		path, body  string
		status      int
		code, inMsg string
	}{
		{"/instances/x/fork", `{"name":"copy"}`, 404, "not_found", "x"},
		{"/instances/x/fork", `{"name":"copy","from_running":true,"target_state":"Standby"}`, 404, "not_found", ""},
		{"/instances/x/fork", `{}`, 400, "invalid_request", "name"},
		{"/instances/x/fork", `{"name":"-x"}`, 400, "invalid_request", "name"},
		{"/instances/x/fork", `{"name":"` + strings.Repeat("a", 64) + `"}`, 400, "invalid_request", "name"},
		{"/instances/x/fork", `{"name":"a","target_state":"Paused"}`, 400, "invalid_request", "target_state"},
		{"/instances/x/fork", `{"name":"a","target_state":null}`, 400, "invalid_request", "target_state"},
		{"/instances/x/fork", `{"name":"a","from_running":1}`, 400, "invalid_request", "from_running"},
		{"/instances/x/fork", `{"name":"a","source":"b"}`, 400, "invalid_request", "source"},
		{"/instances/x/fork", `"a"`, 400, "invalid_request", ""},
		{"/instances/x/snapshots", `{}`, 400, "invalid_request", "kind"},
		{"/instances/x/snapshots", `{"kind":"Standby","name":"s1","tags":{"k":"v"}}`, 404, "not_found", ""},
		{"/instances/x/snapshots", `{"kind":"Paused"}`, 400, "invalid_request", "kind"},
		{"/instances/x/snapshots", `{"kind":"Stopped","name":"a b"}`, 400, "invalid_request", "name"},
		{"/instances/x/snapshots", `{"kind":"Standby","tags":{"k":"` + strings.Repeat("v", 257) + `"}}`, 400, "invalid_request", "tags"},
		{"/instances/x/snapshots", `{"kind":"Standby","tags":{"` + strings.Repeat("k", 129) + `":"v"}}`, 400, "invalid_request", "tags"},
		{"/instances/x/snapshots", `{"kind":"Standby","tags":{"k":"v\n"}}`, 400, "invalid_request", "tags"},
		{"/instances/x/snapshots", `{"kind":"Standby","tags":[]}`, 400, "invalid_request", "tags"},
		{"/instances/x/snapshots", `{"kind":"Standby","compression":{"enabled":true,"algorithm":"gzip"}}`, 400, "invalid_request", "algorithm"},
		{"/snapshots/x/fork", `{"name":"copy"}`, 404, "not_found", "x"},
		{"/snapshots/x/fork", `{"name":"copy","from_running":true}`, 400, "invalid_request", "from_running"},
		{"/snapshots/x/fork", `{"name":"copy","target_state":"Unknown"}`, 400, "invalid_request", "target_state"},
		{"/ingresses", `{"name":"web","rules":[{"match":{"hostname":"a.b","port":8080},"target":{"instance":"web","port":80}}],"tls":true}`, 400, "invalid_request", "tls"},
		{"/ingresses", `{"name":"web","rules":"all"}`, 400, "invalid_request", "rules"},
		{"/ingresses", `{"name":"web","rules":[{"match":{"hostname":"` + strings.Repeat("a", 254) + `"},"target":{"instance":"web","port":80}}]}`, 400, "invalid_request", "hostname"},
		{"/ingresses", `{"name":"web","rules":[{"match":{},"target":{"instance":"web","port":-1}}]}`, 400, "invalid_request", "port"},
	}
	for _, c := range cases {
		t.Run(c.path+" "+c.body, func(t *testing.T) {
			rec := serve(h, "POST", c.path, tok, "application/json", []byte(c.body))
			code, msg := checkErrorShape(t, rec)
			if rec.Code != c.status || code != c.code || !strings.Contains(msg, c.inMsg) {
				t.Fatalf("%d %s %q, want %d %s containing %q", rec.Code, code, msg, c.status, c.code, c.inMsg)
			}
		})
	}
}

// FuzzNewBodies: no fork, snapshot or ingress body gets a 5xx or an error
// body that is not {code, message}; fork and snapshot bodies never succeed
// (the instance and snapshot do not exist).
func FuzzNewBodies(f *testing.F) {
	for _, s := range []string{
		`{"name":"copy"}`, `{"name":"copy","from_running":true,"target_state":"Standby"}`,
		`{"kind":"Standby","name":"s1","tags":{"k":"v"}}`, `{"kind":"Stopped"}`, `{}`,
		`{"name":"web","rules":[{"match":{"hostname":"a.b","port":8080},"target":{"instance":"web","port":80}}]}`,
		`{"name":"web","rules":[{"match":{"hostname":"*.a.b"},"target":{"instance":"web","port":1}}]}`,
		`{"name":"web","rules":[{"match":{"hostname":"a..b"},"target":{"instance":"web","port":1}}]}`,
		`{"name":"\u0000"}`, `{"kind":null}`, `[]`, `null`, ``, `{`,
	} {
		f.Add(s)
	}
	h, tok := newRealEnv(f)
	f.Fuzz(func(t *testing.T, body string) {
		for _, path := range []string{"/instances/x/fork", "/instances/x/snapshots", "/snapshots/x/fork", "/ingresses"} {
			rec := serve(h, "POST", path, tok, "application/json", []byte(body))
			if path == "/ingresses" && rec.Code == http.StatusCreated {
				continue // the fake ingress manager accepts what the spec allows
			}
			if rec.Code < 400 {
				t.Fatalf("POST %s %q: %d", path, body, rec.Code)
			}
			checkErrorShape(t, rec)
		}
	})
}

// FuzzExecStart: any first exec message is either refused as a protocol
// error or yields a request the agent can run.
func FuzzExecStart(f *testing.F) {
	for _, s := range []string{
		`{"command":["sh","-c","echo hi"]}`,
		`{"command":["sh"],"tty":true,"rows":24,"cols":80,"env":{"A":"1"},"cwd":"/","user":"root","timeout":5,"wait_for_agent":3,"separate_stderr":true}`,
		`{"command":[]}`, `{}`, `{"command":["a"],"rows":-1}`, `{"command":["a"],"timeout":1e9}`, `{"command":["a"],"timeout_seconds":1}`,
		`{"command":["a"]} x`, `{"command":null}`, `[]`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var st execStart
		err := decodeStrict(data, &st, "start message")
		if err == nil {
			var req agent.ExecRequest
			if req, err = st.request(); err == nil {
				if len(req.Argv) == 0 || req.Argv[0] == "" || req.Timeout < 0 {
					t.Fatalf("accepted %q as %+v", data, req)
				}
				return
			}
		}
		var pe *protocolError
		if !errors.As(err, &pe) {
			t.Fatalf("%q: error %v is not a protocol error", data, err)
		}
	})
}

// resolvingImages resolves every reference to a fixed image; "bigenv"
// carries 1.1 MiB of environment.
type resolvingImages struct{}

func (r resolvingImages) Resolve(ctx context.Context, ref string) (instances.ImageInfo, error) {
	info := instances.ImageInfo{Name: ref, Digest: "sha256:" + strings.Repeat("a", 64), DiskPath: "/nonexistent/rootfs.erofs",
		FSType: "erofs", Cmd: []string{"/bin/true"}}
	if ref == "bigenv" {
		for i := 0; i < 1100; i++ {
			info.Env = append(info.Env, fmt.Sprintf("V%04d=%s", i, strings.Repeat("x", 1024)))
		}
	}
	return info, nil
}

func (r resolvingImages) ResolveLocal(ctx context.Context, ref string) (instances.ImageInfo, error) {
	return r.Resolve(ctx, ref)
}

// memoryRefusingHypervisor answers a launch the way QEMU does when the
// kernel will not map the guest's memory (above 32 GiB here).
type memoryRefusingHypervisor struct{ fakeHypervisor }

func (memoryRefusingHypervisor) Launch(ctx context.Context, cfg hypervisor.VMConfig) (hypervisor.VM, error) {
	if cfg.MemoryMiB > 32<<10 {
		return nil, fmt.Errorf("qemu launch: %w: qemu exited during startup (exit status 1): qemu-system-x86_64: cannot set up guest memory 'microvm.ram': Cannot allocate memory", hypervisor.ErrHostResources)
	}
	return nil, errors.New("fake hypervisor: launch not supported")
}

// tinyTmpfs mounts a tmpfs of size bytes for the test (root only).
func tinyTmpfs(t *testing.T, size int) string {
	t.Helper()
	tier.Root(t, "it mounts a small tmpfs to fill")
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Fatalf("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// TestCreateHostLimitsBadInput: creates that fail on the host's limits or
// on what the image brings answer 4xx/507 with a message, never 500.
func TestCreateHostLimitsBadInput(t *testing.T) {
	newEnv := func(root string) http.Handler {
		m, err := instances.New(context.Background(), instances.Config{
			Paths: paths.New(root), Hypervisor: memoryRefusingHypervisor{}, Images: resolvingImages{},
			Events: events.New(events.Options{}),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		h, err := NewServer(Options{Instances: m, Images: newFakeImages(), Secret: testSecret})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	tok := mint(t)
	roomy := newEnv(t.TempDir())
	full := newEnv(tinyTmpfs(t, 512<<10))
	for _, c := range []struct {
		name   string
		h      http.Handler
		body   string
		status int
		code   string
		inMsg  string
	}{
		{"image env over 1 MiB", roomy, `{"name":"web","image":"bigenv"}`, 400, "invalid_request", "env"},
		{"request env over 1 MiB", roomy, `{"name":"web","image":"small","env":{"A":"` + strings.Repeat("x", 1100<<10) + `"}}`, 413, "request_too_large", ""},
		{"64GB the host refuses", roomy, `{"name":"web","image":"small","size":"64GB","overlay_size":"16MB"}`, 409, "insufficient_resources", "size"},
		{"disk full", full, `{"name":"web","image":"small","overlay_size":"64MB"}`, 507, "insufficient_storage", "disk space"},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := serve(c.h, "POST", "/instances", tok, "application/json", []byte(c.body))
			if rec.Code != 507 {
				checkErrorShape(t, rec)
			}
			var e struct{ Code, Message string }
			_ = json.Unmarshal(rec.Body.Bytes(), &e)
			t.Logf("%d %s: %.300s", rec.Code, e.Code, e.Message)
			if rec.Code != c.status || e.Code != c.code || !strings.Contains(e.Message, c.inMsg) {
				t.Fatalf("%d %s %q, want %d %s containing %q", rec.Code, e.Code, e.Message, c.status, c.code, c.inMsg)
			}
		})
	}
}

// FuzzCopyStart: any first cp message is either refused as a protocol
// error or yields a request with an absolute guest path and a valid put.
func FuzzCopyStart(f *testing.F) {
	for _, s := range []string{
		`{"direction":"to","guest_path":"/a/b","is_dir":false,"mode":420,"follow_links":false,"uid":1,"gid":2}`,
		`{"direction":"to","guest_path":"/d","is_dir":true,"mode":33261,"src_basename":"d","mtime":1700000000}`,
		`{"direction":"to","guest_path":"/l","link_target":"../x"}`, `{"direction":"to","guest_path":"/l","link_target":"x","is_dir":true}`,
		`{"direction":"from","guest_path":"/","follow_links":true,"uid":0,"gid":0}`, `{"direction":"from","guest_path":"rel"}`,
		`{"direction":"up","guest_path":"/"}`, `{"direction":"to","guest_path":"/a","mode":-1}`, `{"direction":"to","path":"/a"}`,
		`{"direction":"to","guest_path":"/a\u0000b"}`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var st copyStart
		err := decodeStrict(data, &st, "start message")
		if err == nil {
			if err = st.validate(); err == nil {
				if !strings.HasPrefix(st.GuestPath, "/") || strings.ContainsRune(st.GuestPath, 0) {
					t.Fatalf("accepted guest path %q", st.GuestPath)
				}
				if st.Direction == "to" {
					req := st.putRequest()
					if req.Mode > 0o7777 || (req.Kind == agent.PutSymlink) != (req.LinkTarget != "") || req.Path != st.GuestPath {
						t.Fatalf("accepted %q as %+v", data, req)
					}
				}
				return
			}
		}
		var pe *protocolError
		if !errors.As(err, &pe) {
			t.Fatalf("%q: error %v is not a protocol error", data, err)
		}
	})
}
