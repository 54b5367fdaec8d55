package api

import (
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"hypeman/internal/auth"
	"hypeman/internal/images"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/phases"
)

// Tests of the hypeman 0.3.0 request/response shapes this server added or
// changed: list filters by tag, the start body, restore target states,
// fields this host refuses, capabilities, auto-standby, devices, and the
// operations that are not built yet.

func names(t *testing.T, resp *http.Response) []string {
	t.Helper()
	var list []map[string]any
	jsonBody(t, resp, &list)
	var out []string
	for _, m := range list {
		out = append(out, m["name"].(string))
	}
	return out
}

func TestListFiltersByTags(t *testing.T) {
	e, fs := newSnapshotEnv(t)
	tok := mint(t)
	addInstance(e, "a", state.Running).Tags = map[string]string{"team": "web", "env": "prod"}
	addInstance(e, "b", state.Stopped).Tags = map[string]string{"team": "web", "env": "dev"}
	addInstance(e, "c", state.Running)
	for q, want := range map[string][]string{
		"":                              {"a", "b", "c"},
		"?tags[team]=web":               {"a", "b"},
		"?tags[team]=web&tags[env]=dev": {"b"},
		"?tags[team]=db":                nil,
		"?state=Running&tags[team]=web": {"a"},
		"?" + url.Values{"tags[env]": {"prod"}}.Encode(): {"a"},
	} {
		if got := names(t, e.do("GET", "/instances"+q, tok, "")); !reflect.DeepEqual(got, want) {
			t.Errorf("GET /instances%s = %v, want %v", q, got, want)
		}
	}
	// Snapshots: kind, name, source and tags filters combine.
	for _, b := range []string{`{"kind":"Standby","name":"s1","tags":{"k":"v"}}`, `{"kind":"Standby","name":"s2"}`} {
		resp := e.do("POST", "/instances/a/snapshots", tok, b)
		resp.Body.Close()
	}
	fs.byID["snaps2"].Kind = instances.SnapshotStopped
	for q, want := range map[string][]string{
		"":                          {"s1", "s2"},
		"?kind=Standby":             {"s1"},
		"?kind=Stopped":             {"s2"},
		"?name=s2":                  {"s2"},
		"?tags[k]=v":                {"s1"},
		"?source_instance_id=ida":   {"s1", "s2"},
		"?source_instance_id=nope":  nil,
		"?kind=Standby&tags[k]=bad": nil,
	} {
		if got := names(t, e.do("GET", "/snapshots"+q, tok, "")); !reflect.DeepEqual(got, want) {
			t.Errorf("GET /snapshots%s = %v, want %v", q, got, want)
		}
	}
	resp := e.do("GET", "/snapshots?kind=Paused", tok, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 400 || code != "invalid_request" {
		t.Errorf("bad kind filter: %d %s", resp.StatusCode, code)
	}
}

func TestImageTagsPlatformAndCredentials(t *testing.T) {
	e := newTestEnv(t, nil)
	tok := mint(t)
	resp := e.do("POST", "/images", tok, `{"name":"busybox","platform":"linux/amd64","tags":{"team":"web"},
		"credentials":{"username":"u","password":"p"}}`)
	resp.Body.Close()
	if resp.StatusCode != 202 {
		t.Fatalf("pull: %d", resp.StatusCode)
	}
	if got := e.imgs.lastEnsure; got.Tags["team"] != "web" || !reflect.DeepEqual(got.Auth, &authn.Basic{Username: "u", Password: "p"}) {
		t.Fatalf("ensure options %+v", got)
	}
	resp = e.do("POST", "/images", tok, `{"name":"busybox","credentials":{"registry_token":"t"}}`)
	resp.Body.Close()
	if got := e.imgs.lastEnsure.Auth; !reflect.DeepEqual(got, &authn.Bearer{Token: "t"}) {
		t.Fatalf("bearer auth %+v", got)
	}
	for body, want := range map[string]string{
		`{"name":"busybox","platform":"linux"}`:                                  "invalid_platform",
		`{"name":"busybox","platform":"Linux/AMD64"}`:                            "invalid_platform",
		`{"name":"busybox","platform":"linux/arm64"}`:                            "unsupported_platform",
		`{"name":"busybox","platform":"windows/amd64"}`:                          "unsupported_platform",
		`{"name":"busybox","tags":{"k$":"v"}}`:                                   "invalid_request",
		`{"name":"busybox","credentials":{"registry_token":"t","username":"u"}}`: "invalid_request",
	} {
		resp := e.do("POST", "/images", tok, body)
		if code, _ := errBody(t, resp); resp.StatusCode != 400 || code != want {
			t.Errorf("%s: %d %s, want 400 %s", body, resp.StatusCode, code, want)
		}
	}
	e.imgs.byName["docker.io/library/busybox:latest"].Tags = map[string]string{"team": "web"}
	e.imgs.byName["docker.io/library/alpine:latest"] = &images.Image{Name: "docker.io/library/alpine:latest", Status: images.StatusReady}
	if got := names(t, e.do("GET", "/images?tags[team]=web", tok, "")); !reflect.DeepEqual(got, []string{"docker.io/library/busybox:latest"}) {
		t.Errorf("image tag filter: %v", got)
	}
}

func TestCreateRefusesWhatThisHostCannotHonour(t *testing.T) {
	e := newTestEnv(t, nil)
	tok := mint(t)
	cases := map[string]string{
		`"credentials":{"KEY":{"source":{"env":"REAL"},"inject":[{"as":{"header":"Authorization","format":"Bearer ${value}"}}]}}`: "credentials",
		`"devices":["l4-gpu"]`:                                 "devices",
		`"gpu":{"profile":"L40S-1Q"}`:                          "gpu",
		`"network":{"egress":{"enabled":true}}`:                "network.egress.enabled",
		`"hypervisor":"firecracker"`:                           "hypervisor",
		`"hypervisor":"cloud-hypervisor"`:                      "hypervisor",
		`"platform":"linux/arm64"`:                             "platform",
		`"auto_standby":{"enabled":true,"idle_timeout":"5ms"}`: "auto_standby.idle_timeout",
	}
	for extra, field := range cases {
		resp := e.do("POST", "/instances", tok, `{"name":"web","image":"busybox",`+extra+`}`)
		code, msg := errBody(t, resp)
		if resp.StatusCode != 400 || !strings.Contains(msg, field) || (code != "unsupported" && code != "unsupported_platform" && code != "invalid_request") {
			t.Errorf("%s: %d %s %q, want 400 naming %s", extra, resp.StatusCode, code, msg, field)
		}
	}
	if len(e.inst.created) != 0 {
		t.Fatalf("a refused create reached the manager: %+v", e.inst.created)
	}
	// What the upstream CLI sends on every run, and the no-op values, work.
	resp := e.do("POST", "/instances", tok, `{"name":"web","image":"busybox","size":"1GB","hotplug_size":"3GB","overlay_size":"10GB",
		"vcpus":2,"hypervisor":"qemu","platform":"linux/amd64","skip_kernel_headers":true,"ttl":"0s","auto_standby":{"enabled":false},
		"disk_io_bps":"100MB/s","network":{"enabled":true,"bandwidth_download":"1Gbps","bandwidth_upload":"125MB/s","egress":{"enabled":false}},
		"devices":[],"volumes":[]}`)
	var in map[string]any
	jsonBody(t, resp, &in)
	if resp.StatusCode != 201 || in["hypervisor"] != "qemu-microvm" {
		t.Fatalf("upstream CLI defaults: %d %v", resp.StatusCode, in)
	}
	p := e.inst.created[0]
	if p.HotplugSize != "3GB" || p.DiskIOBps != "100MB/s" || p.BandwidthDownload != "1Gbps" || p.BandwidthUpload != "125MB/s" {
		t.Fatalf("resource limits not passed: %+v", p)
	}
}

func TestStartBodyAndRestoreTarget(t *testing.T) {
	e, fs := newSnapshotEnv(t)
	tok := mint(t)
	addInstance(e, "web", state.Stopped)
	for body, want := range map[string]instances.StartParams{
		``:                              {},
		`{}`:                            {},
		`{"cmd":["echo","hi"]}`:         {Cmd: &[]string{"echo", "hi"}},
		`{"entrypoint":[],"cmd":["x"]}`: {Entrypoint: &[]string{}, Cmd: &[]string{"x"}},
	} {
		resp := e.do("POST", "/instances/web/start", tok, body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !reflect.DeepEqual(e.inst.lastStart, want) {
			t.Errorf("start %q: %d %+v, want %+v", body, resp.StatusCode, e.inst.lastStart, want)
		}
	}
	resp := e.do("POST", "/instances/web/snapshots", tok, `{"kind":"Stopped","name":"base"}`)
	resp.Body.Close()
	for body, want := range map[string]state.State{``: "", `{"target_state":"Running"}`: state.Running, `{"target_state":"Standby"}`: state.Standby} {
		resp := e.do("POST", "/instances/web/snapshots/base/restore", tok, body)
		resp.Body.Close()
		if resp.StatusCode != 200 || fs.lastRestore.TargetState != want {
			t.Errorf("restore %q: %d %+v", body, resp.StatusCode, fs.lastRestore)
		}
	}
	resp = e.do("POST", "/instances/web/snapshots/base/restore", tok, `{"target_hypervisor":"vz"}`)
	if code, _ := errBody(t, resp); resp.StatusCode != 400 || code != "invalid_request" {
		t.Errorf("restore to vz: %d %s", resp.StatusCode, code)
	}
}

func TestPhasesInInstance(t *testing.T) {
	since := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var seen []string
	e := newTestEnv(t, func(o *Options) {
		o.Phases = phaseFunc(func(id string, st state.State, entered time.Time) phases.View {
			seen = append(seen, id+" "+string(st))
			return phases.View{DurationsMs: map[string]int64{"running": 1500, "standby": 300}, Current: "running", Since: since}
		})
	})
	addInstance(e, "web", state.Running)
	var in map[string]any
	jsonBody(t, e.do("GET", "/instances/web", mint(t), ""), &in)
	if in["current_phase"] != "running" || in["current_phase_since"] != "2026-01-01T00:00:00Z" ||
		!reflect.DeepEqual(in["phase_durations_ms"], map[string]any{"running": float64(1500), "standby": float64(300)}) {
		t.Fatalf("phases %v", in)
	}
	if len(seen) != 1 || seen[0] != "idweb Running" {
		t.Fatalf("tracker asked %v", seen)
	}
}

type phaseFunc func(id string, st state.State, entered time.Time) phases.View

func (f phaseFunc) View(id string, st state.State, entered time.Time) phases.View {
	return f(id, st, entered)
}

func TestAutoStandbyDevicesAndNotBuilt(t *testing.T) {
	e := newTestEnv(t, nil)
	tok := mint(t)
	addInstance(e, "web", state.Running)
	addInstance(e, "idle", state.Standby)
	var st map[string]any
	jsonBody(t, e.do("GET", "/instances/web/auto-standby/status", tok, ""), &st)
	if st["supported"] != false || st["status"] != "unsupported" || st["reason"] != "unsupported_platform" {
		t.Fatalf("status %v", st)
	}
	resp := e.do("POST", "/instances/web/auto-standby/hold", tok, "")
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("hold on a running instance: %d", resp.StatusCode)
	}
	resp = e.do("POST", "/instances/idle/auto-standby/hold", tok, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 409 || code != "instance_in_standby" {
		t.Fatalf("hold on standby: %d %s", resp.StatusCode, code)
	}
	if resp := e.do("GET", "/instances/nope/auto-standby/status", tok, ""); resp.StatusCode != 404 {
		t.Fatalf("status of a missing instance: %d", resp.StatusCode)
	}
	for _, p := range []string{"/devices", "/devices/available"} {
		var list []any
		resp := e.do("GET", p, tok, "")
		jsonBody(t, resp, &list)
		if resp.StatusCode != 200 || list == nil || len(list) != 0 {
			t.Errorf("GET %s: %d %v", p, resp.StatusCode, list)
		}
	}
	if resp := e.do("POST", "/devices", tok, `{"pci_address":"0000:a2:00.0"}`); resp.StatusCode != 501 {
		t.Errorf("register device: %d", resp.StatusCode)
	}
	if resp := e.do("GET", "/devices/gpu0", tok, ""); resp.StatusCode != 404 {
		t.Errorf("get device: %d", resp.StatusCode)
	}
	notBuilt := []struct{ method, path, body string }{
		{"GET", "/resources", ""}, {"POST", "/resources/memory/reclaim", `{"reclaim_bytes":1}`},
		{"GET", "/volumes", ""}, {"POST", "/volumes", `{"name":"v","size_gb":1}`}, {"GET", "/volumes/v", ""}, {"DELETE", "/volumes/v", ""},
		{"POST", "/instances/web/volumes/v", `{"mount_path":"/data"}`}, {"DELETE", "/instances/web/volumes/v", ""},
		{"GET", "/builds", ""}, {"GET", "/builds/b", ""}, {"DELETE", "/builds/b", ""}, {"GET", "/builds/b/events", ""},
		{"GET", "/builders", ""}, {"POST", "/builders", `{}`}, {"GET", "/builders/b", ""}, {"DELETE", "/builders/b", ""}, {"POST", "/builders/b/prune", ""},
		{"GET", "/pushes", ""}, {"POST", "/pushes", `{"image":"a","target":"b"}`}, {"GET", "/pushes/p", ""},
	}
	for _, c := range notBuilt {
		resp := e.do(c.method, c.path, tok, c.body)
		if code, msg := errBody(t, resp); resp.StatusCode != 501 || code != "not_implemented" || !strings.Contains(msg, "not implemented") {
			t.Errorf("%s %s: %d %s %q", c.method, c.path, resp.StatusCode, code, msg)
		}
	}
	// They keep their scopes.
	if resp := e.do("GET", "/volumes", mint(t, auth.InstanceRead), ""); resp.StatusCode != 403 {
		t.Errorf("volumes without volume:read: %d", resp.StatusCode)
	}
}

// TestStopBodyOptional: upstream clients stop without a body (no
// Content-Type either); ours may send {"timeout"}, which reaches the
// manager as given; malformed bodies are 400s naming the field.
func TestStopBodyOptional(t *testing.T) {
	e := newTestEnv(t, nil)
	tok := mint(t)
	in := addInstance(e, "web", state.Running)
	in.StopTimeout = "30s"
	cases := []struct {
		body string
		want instances.StopParams
	}{
		{``, instances.StopParams{}},
		{`{}`, instances.StopParams{}},
		{`{"timeout":"1s"}`, instances.StopParams{Timeout: "1s"}},
		{`{"timeout":"0s"}`, instances.StopParams{Timeout: "0s"}},
	}
	for _, c := range cases {
		e.inst.mu.Lock()
		e.inst.stops = nil
		e.inst.mu.Unlock()
		resp := e.do("POST", "/instances/web/stop", tok, c.body)
		var out map[string]any
		jsonBody(t, resp, &out)
		e.inst.mu.Lock()
		stops := e.inst.stops
		e.inst.mu.Unlock()
		if resp.StatusCode != 200 || len(stops) != 1 || stops[0] != c.want {
			t.Errorf("stop %q: %d, manager got %+v, want %+v", c.body, resp.StatusCode, stops, c.want)
		}
		if out["stop_timeout"] != "30s" {
			t.Errorf("stop %q: instance stop_timeout %v", c.body, out["stop_timeout"])
		}
	}
	for body, field := range map[string]string{
		`{"timeout":5}`:  "timeout",
		`{"grace":"5s"}`: "grace",
		`{"timeout":"` + strings.Repeat("1", 40) + `s"}`: "timeout",
	} {
		resp := e.do("POST", "/instances/web/stop", tok, body)
		code, msg := errBody(t, resp)
		if resp.StatusCode != 400 || code != "invalid_request" || !strings.Contains(msg, field) {
			t.Errorf("stop %s: %d %s %q, want 400 naming %s", body, resp.StatusCode, code, msg, field)
		}
	}
	// stop_timeout at create reaches the manager, which validates it.
	resp := e.do("POST", "/instances", tok, `{"name":"k8s","image":"busybox","stop_timeout":"30s"}`)
	resp.Body.Close()
	if resp.StatusCode != 201 || len(e.inst.created) != 1 || e.inst.created[0].StopTimeout != "30s" {
		t.Fatalf("create with stop_timeout: %d %+v", resp.StatusCode, e.inst.created)
	}
	// The manager's refusal (timeout above the instance's) is a 400 too.
	e.inst.errOn["Stop"] = &instances.InvalidArgumentError{Field: "timeout", Reason: "1m is out of range: 0s to the instance's stop_timeout (30s, set at create)"}
	resp = e.do("POST", "/instances/web/stop", tok, `{"timeout":"1m"}`)
	if code, msg := errBody(t, resp); resp.StatusCode != 400 || code != "invalid_request" || !strings.Contains(msg, "timeout") || !strings.Contains(msg, "30s") {
		t.Errorf("stop over the instance's timeout: %d %s %q", resp.StatusCode, code, msg)
	}
}

// TestWorkingDirAndReportOnly: this server's working_dir and
// health_check.report_only reach the manager from a create and are shown
// on the instance (absent when unset).
func TestWorkingDirAndReportOnly(t *testing.T) {
	e := newTestEnv(t, nil)
	tok := mint(t)
	resp := e.do("POST", "/instances", tok, `{"name":"wd","image":"busybox","working_dir":"/srv/app",`+
		`"health_check":{"type":"tcp","tcp":{"port":80},"report_only":true}}`)
	var out map[string]any
	jsonBody(t, resp, &out)
	if resp.StatusCode != 201 || len(e.inst.created) != 1 {
		t.Fatalf("create: %d %+v", resp.StatusCode, e.inst.created)
	}
	p := e.inst.created[0]
	if p.WorkingDir != "/srv/app" || p.HealthCheck == nil || !p.HealthCheck.ReportOnly || p.HealthCheck.Port != 80 {
		t.Fatalf("manager got working_dir %q, check %+v", p.WorkingDir, p.HealthCheck)
	}
	if hc, _ := out["health_check"].(map[string]any); hc["report_only"] != true {
		t.Errorf("created instance's health_check %v", out["health_check"])
	}
	if got := toAPIInstance(&instances.Instance{WorkingDir: "/srv/app"}, phases.View{}).WorkingDir; got == nil || *got != "/srv/app" {
		t.Errorf("instance working_dir %v", got)
	}
	if got := toAPIInstance(&instances.Instance{}, phases.View{}).WorkingDir; got != nil {
		t.Errorf("instance without working_dir shows %q", *got)
	}
	// The manager's refusal is a 400 naming the field.
	e.inst.errOn["Create"] = &instances.InvalidArgumentError{Field: "working_dir", Reason: "must be a clean path"}
	resp = e.do("POST", "/instances", tok, `{"name":"wd2","image":"busybox","working_dir":"/a/"}`)
	if code, msg := errBody(t, resp); resp.StatusCode != 400 || code != "invalid_request" || !strings.Contains(msg, "working_dir") {
		t.Errorf("refused working_dir: %d %s %q", resp.StatusCode, code, msg)
	}
}
