package api

import (
	"context"
	"fmt"
	"net"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"hypeman/internal/auth"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/network/ingress"
)

func addInstance(e *testEnv, name string, st state.State) *instances.Instance {
	in := &instances.Instance{ID: "id" + name, Name: name, Image: "docker.io/library/busybox:latest", State: st,
		Size: "1GB", VCPUs: 2, OverlaySize: "10GB", CreatedAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), Hypervisor: "qemu"}
	e.inst.add(in)
	return in
}

func TestLifecycleHandlers(t *testing.T) {
	lc := &fakeLifecycle{}
	e := newTestEnv(t, func(o *Options) { lc.inst = o.Instances.(*fakeInstances); o.Lifecycle = lc })
	addInstance(e, "web", state.Running)
	tok := mint(t, auth.InstanceWrite)
	for _, c := range []struct{ action, want string }{
		{"standby", "Standby"}, {"restore", "Running"}, {"pause", "Paused"}, {"resume", "Running"},
	} {
		resp := e.do("POST", "/instances/web/"+c.action, tok, "")
		var in map[string]any
		jsonBody(t, resp, &in)
		if resp.StatusCode != 200 || in["state"] != c.want || in["id"] != "idweb" {
			t.Errorf("%s: %d %v", c.action, resp.StatusCode, in)
		}
	}
	if want := []string{"standby web", "restore web", "pause web", "resume web"}; !reflect.DeepEqual(lc.calls, want) {
		t.Fatalf("calls %v", lc.calls)
	}
	// Manager errors keep their mapping.
	resp := e.do("POST", "/instances/nope/standby", tok, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 404 || code != "not_found" {
		t.Fatalf("unknown instance: %d %s", resp.StatusCode, code)
	}
	lc.err = &instances.TransitionError{Action: instances.ActionRestore, State: state.Running, Allowed: instances.Allowed(state.Running)}
	resp = e.do("POST", "/instances/web/restore", tok, "")
	code, msg := errBody(t, resp)
	if resp.StatusCode != 409 || code != "invalid_state" || !strings.Contains(msg, "allowed: stop, standby") {
		t.Fatalf("restore of a Running instance: %d %s %q", resp.StatusCode, code, msg)
	}
	// instance:read is not enough.
	resp = e.do("POST", "/instances/web/standby", mint(t, auth.InstanceRead), "")
	if code, _ := errBody(t, resp); resp.StatusCode != 403 || code != "forbidden" {
		t.Fatalf("standby with instance:read: %d", resp.StatusCode)
	}
}

func TestLifecycleNotImplemented(t *testing.T) {
	e := newTestEnv(t, nil)
	addInstance(e, "web", state.Running)
	for _, p := range []string{"standby", "restore", "pause", "resume"} {
		resp := e.do("POST", "/instances/web/"+p, mint(t), "")
		if code, _ := errBody(t, resp); resp.StatusCode != 501 || code != "not_implemented" {
			t.Errorf("%s without Lifecycle: %d %s", p, resp.StatusCode, code)
		}
	}
	resp := e.do("POST", "/instances/web/fork", mint(t), `{"name":"copy"}`)
	if code, _ := errBody(t, resp); resp.StatusCode != 501 || code != "not_implemented" {
		t.Errorf("fork without Lifecycle: %d %s", resp.StatusCode, code)
	}
}

func TestFork(t *testing.T) {
	lc := &fakeLifecycle{}
	e := newTestEnv(t, func(o *Options) { lc.inst = o.Instances.(*fakeInstances); o.Lifecycle = lc })
	addInstance(e, "web", state.Running)
	addInstance(e, "taken", state.Stopped)
	tok := mint(t, auth.InstanceWrite)

	resp := e.do("POST", "/instances/web/fork", tok, `{"name":"web-2","from_running":true,"target_state":"Standby"}`)
	var in map[string]any
	jsonBody(t, resp, &in)
	if resp.StatusCode != 201 || in["name"] != "web-2" || in["id"] != "idweb-2" || in["state"] != "Standby" {
		t.Fatalf("fork: %d %v", resp.StatusCode, in)
	}
	resp = e.do("POST", "/instances/web/fork", tok, `{"name":"web-3"}`)
	resp.Body.Close()
	want := []instances.ForkParams{{Name: "web-2", FromRunning: true, TargetState: state.Standby}, {Name: "web-3"}}
	if resp.StatusCode != 201 || !reflect.DeepEqual(lc.forks, want) {
		t.Fatalf("fork params %+v (status %d)", lc.forks, resp.StatusCode)
	}
	cases := []struct {
		body   string
		status int
		code   string
		inMsg  string
	}{
		{`{"name":"taken"}`, 409, "conflict", "taken"},
		{`{"name":"Bad_Name"}`, 400, "invalid_request", "name"},
		{`{"name":"x","target_state":"Paused"}`, 400, "invalid_request", "target_state"},
		{`{"name":"x","target_state":"running"}`, 400, "invalid_request", "target_state"},
		{`{"name":"x","from_running":"yes"}`, 400, "invalid_request", "from_running"},
		{`{"name":"x","extra":1}`, 400, "invalid_request", "extra"},
		{`{}`, 400, "invalid_request", "name"},
		{``, 400, "invalid_request", ""},
	}
	for _, c := range cases {
		resp := e.do("POST", "/instances/web/fork", tok, c.body)
		code, msg := errBody(t, resp)
		if resp.StatusCode != c.status || code != c.code || !strings.Contains(msg, c.inMsg) {
			t.Errorf("fork %s: %d %s %q, want %d %s containing %q", c.body, resp.StatusCode, code, msg, c.status, c.code, c.inMsg)
		}
	}
	lc.err = &instances.TransitionError{Action: instances.ActionFork, State: state.Running, Allowed: instances.Allowed(state.Running)}
	resp = e.do("POST", "/instances/web/fork", tok, `{"name":"web-4"}`)
	if code, _ := errBody(t, resp); resp.StatusCode != 409 || code != "invalid_state" {
		t.Fatalf("fork in the wrong state: %d %s", resp.StatusCode, code)
	}
}

func newSnapshotEnv(t *testing.T) (*testEnv, *fakeSnapshots) {
	var fs *fakeSnapshots
	e := newTestEnv(t, func(o *Options) {
		fs = newFakeSnapshots(o.Instances.(*fakeInstances))
		o.Snapshots = fs
	})
	return e, fs
}

func TestSnapshotHandlers(t *testing.T) {
	e, fs := newSnapshotEnv(t)
	addInstance(e, "web", state.Running)
	addInstance(e, "db", state.Stopped)
	write, read := mint(t, auth.SnapshotWrite), mint(t, auth.SnapshotRead)
	// Restore and fork act on instances too.
	restorer := mint(t, auth.SnapshotWrite, auth.InstanceWrite)

	resp := e.do("POST", "/instances/web/snapshots", write, `{"kind":"Standby","name":"before-upgrade","tags":{"why":"test"}}`)
	var sn map[string]any
	jsonBody(t, resp, &sn)
	want := map[string]any{
		"id": "snapbefore-upgrade", "name": "before-upgrade", "kind": "Standby",
		"source_instance_id": "idweb", "source_instance_name": "web",
		"image": "docker.io/library/busybox:latest", "image_digest": "sha256:abc",
		"tags": map[string]any{"why": "test"}, "created_at": "2025-02-03T04:05:06Z",
		"size_bytes": float64(1234), "memory_bytes": float64(1 << 30), "source_hypervisor": "qemu-microvm",
		"compression_state": "compressed", "compression": map[string]any{"enabled": true, "algorithm": "zstd", "level": float64(1)},
	}
	if resp.StatusCode != 201 || !reflect.DeepEqual(sn, want) {
		t.Fatalf("create: %d\n got %v\nwant %v", resp.StatusCode, sn, want)
	}
	// kind is required (hypeman's rule); the name is optional.
	resp = e.do("POST", "/instances/db/snapshots", write, `{}`)
	if code, msg := errBody(t, resp); resp.StatusCode != 400 || code != "invalid_request" || !strings.Contains(msg, "kind") {
		t.Fatalf("create without kind: %d %s %s", resp.StatusCode, code, msg)
	}
	resp = e.do("POST", "/instances/db/snapshots", write, `{"kind":"Stopped"}`)
	resp.Body.Close()
	if resp.StatusCode != 201 || fs.created[1].Kind != "Stopped" || fs.created[1].Name != "" {
		t.Fatalf("create with defaults: %d %+v", resp.StatusCode, fs.created)
	}
	resp = e.do("POST", "/instances/web/snapshots", write, `{"kind":"Stopped"}`)
	if code, _ := errBody(t, resp); resp.StatusCode != 409 || code != "invalid_state" {
		t.Fatalf("Stopped snapshot of a Running instance: %d %s", resp.StatusCode, code)
	}

	// List, with the instance filter resolved like an instance reference
	// and matching the recorded source after the instance is gone.
	list := func(query string) []string {
		t.Helper()
		resp := e.do("GET", "/snapshots"+query, read, "")
		var l []map[string]any
		jsonBody(t, resp, &l)
		if resp.StatusCode != 200 {
			t.Fatalf("list %s: %d", query, resp.StatusCode)
		}
		var names []string
		for _, s := range l {
			names = append(names, s["name"].(string))
		}
		return names
	}
	if got := list(""); !reflect.DeepEqual(got, []string{"before-upgrade", "db-snap"}) {
		t.Fatalf("list: %v", got)
	}
	if got := list("?instance=web"); !reflect.DeepEqual(got, []string{"before-upgrade"}) {
		t.Fatalf("list ?instance=web: %v", got)
	}
	if got := list("?instance=iddb"); !reflect.DeepEqual(got, []string{"db-snap"}) {
		t.Fatalf("list ?instance=iddb: %v", got)
	}
	e.inst.Delete(t.Context(), "db")
	if got := list("?instance=db"); !reflect.DeepEqual(got, []string{"db-snap"}) {
		t.Fatalf("list ?instance=db after delete: %v", got)
	}
	if got := list("?instance=other"); len(got) != 0 {
		t.Fatalf("list ?instance=other: %v", got)
	}

	resp = e.do("GET", "/snapshots/before-upgrade", read, "")
	jsonBody(t, resp, &sn)
	if resp.StatusCode != 200 || sn["id"] != "snapbefore-upgrade" {
		t.Fatalf("get: %d %v", resp.StatusCode, sn)
	}
	resp = e.do("GET", "/snapshots/nope", read, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 404 || code != "not_found" {
		t.Fatalf("get unknown: %d %s", resp.StatusCode, code)
	}

	resp = e.do("POST", "/instances/web/snapshots/before-upgrade/restore", restorer, "")
	var in map[string]any
	jsonBody(t, resp, &in)
	if resp.StatusCode != 200 || in["state"] != "Running" || !reflect.DeepEqual(fs.restore, []string{"idweb snapbefore-upgrade"}) {
		t.Fatalf("restore: %d %v %v", resp.StatusCode, in, fs.restore)
	}
	resp = e.do("POST", "/instances/web/snapshots/nope/restore", restorer, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 404 {
		t.Fatalf("restore unknown snapshot: %d %s", resp.StatusCode, code)
	}

	resp = e.do("POST", "/snapshots/before-upgrade/fork", restorer, `{"name":"clone","target_state":"Running"}`)
	jsonBody(t, resp, &in)
	if resp.StatusCode != 201 || in["name"] != "clone" || !reflect.DeepEqual(fs.forks, []instances.ForkParams{{Name: "clone", TargetState: state.Running}}) {
		t.Fatalf("fork: %d %v %+v", resp.StatusCode, in, fs.forks)
	}

	// Scopes: read cannot write or delete, write cannot delete.
	for _, c := range []struct{ method, path, tok, body string }{
		{"POST", "/instances/web/snapshots", read, `{"kind":"Standby"}`},
		{"POST", "/snapshots/before-upgrade/fork", read, `{"name":"x"}`},
		{"DELETE", "/snapshots/before-upgrade", write, ""},
		{"GET", "/snapshots", mint(t, auth.InstanceRead), ""},
		{"POST", "/instances/web/snapshots/before-upgrade/restore", mint(t, auth.InstanceWrite), ""},
	} {
		resp := e.do(c.method, c.path, c.tok, c.body)
		if code, _ := errBody(t, resp); resp.StatusCode != 403 || code != "forbidden" {
			t.Errorf("%s %s: %d %s", c.method, c.path, resp.StatusCode, code)
		}
	}
	resp = e.do("DELETE", "/snapshots/before-upgrade", mint(t, auth.SnapshotDelete), "")
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	resp = e.do("DELETE", "/snapshots/before-upgrade", mint(t, auth.SnapshotDelete), "")
	if code, _ := errBody(t, resp); resp.StatusCode != 404 {
		t.Fatalf("delete again: %d %s", resp.StatusCode, code)
	}

	// Bad bodies never reach the manager.
	n := len(fs.created)
	for _, body := range []string{`{"kind":"standby"}`, `{"kind":"Running"}`, `{"name":"UPPER"}`, `{"tags":{"a":1}}`, `{"tag":{}}`, `[]`} {
		resp := e.do("POST", "/instances/web/snapshots", write, body)
		if code, _ := errBody(t, resp); resp.StatusCode != 400 || code != "invalid_request" {
			t.Errorf("create %s: %d %s", body, resp.StatusCode, code)
		}
	}
	if len(fs.created) != n {
		t.Fatal("a bad body reached the manager")
	}
}

func TestSnapshotsNotImplemented(t *testing.T) {
	e := newTestEnv(t, nil)
	addInstance(e, "web", state.Running)
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/snapshots", ""}, {"GET", "/snapshots/x", ""}, {"DELETE", "/snapshots/x", ""},
		{"POST", "/instances/web/snapshots", `{"kind":"Standby"}`}, {"POST", "/snapshots/x/fork", `{"name":"y"}`},
		{"POST", "/instances/web/snapshots/x/restore", ""},
	} {
		resp := e.do(c.method, c.path, mint(t), c.body)
		if code, _ := errBody(t, resp); resp.StatusCode != 501 || code != "not_implemented" {
			t.Errorf("%s %s: %d %s", c.method, c.path, resp.StatusCode, code)
		}
	}
}

func TestIngressHandlers(t *testing.T) {
	fi := &fakeIngresses{}
	e := newTestEnv(t, func(o *Options) { o.Ingresses = fi })
	write, read := mint(t, auth.InstanceWrite), mint(t, auth.InstanceRead)

	resp := e.do("POST", "/ingresses", write, `{"name":"web","rules":[
		{"match":{"hostname":"app.example.com","port":8080},"target":{"instance":"web","port":80}},
		{"match":{},"target":{"instance":"api","port":3000}}]}`)
	var ing map[string]any
	jsonBody(t, resp, &ing)
	want := map[string]any{"id": "ingweb", "name": "web", "created_at": "2025-05-06T07:08:09Z", "rules": []any{
		map[string]any{"match": map[string]any{"hostname": "app.example.com", "port": float64(8080)}, "target": map[string]any{"instance": "web", "port": float64(80)},
			"tls": false, "redirect_http": false},
		map[string]any{"match": map[string]any{"port": float64(80)}, "target": map[string]any{"instance": "api", "port": float64(3000)},
			"tls": false, "redirect_http": false},
	}}
	if resp.StatusCode != 201 || !reflect.DeepEqual(ing, want) {
		t.Fatalf("create: %d\n got %v\nwant %v", resp.StatusCode, ing, want)
	}
	wantReq := ingress.CreateRequest{Name: "web", Rules: []ingress.Rule{
		{Match: ingress.Match{Hostname: "app.example.com", Port: 8080}, Target: ingress.Target{Instance: "web", Port: 80}},
		{Match: ingress.Match{}, Target: ingress.Target{Instance: "api", Port: 3000}},
	}}
	if !reflect.DeepEqual(fi.reqs[0], wantReq) {
		t.Fatalf("manager got %+v", fi.reqs[0])
	}
	resp = e.do("POST", "/ingresses", write, `{"name":"web","rules":[{"match":{"port":81},"target":{"instance":"x","port":1}}]}`)
	if code, _ := errBody(t, resp); resp.StatusCode != 409 || code != "conflict" {
		t.Fatalf("duplicate name: %d %s", resp.StatusCode, code)
	}
	resp = e.do("GET", "/ingresses", read, "")
	var list []map[string]any
	jsonBody(t, resp, &list)
	if resp.StatusCode != 200 || len(list) != 1 || list[0]["name"] != "web" {
		t.Fatalf("list: %d %v", resp.StatusCode, list)
	}
	resp = e.do("GET", "/ingresses/ingweb", read, "")
	jsonBody(t, resp, &ing)
	if resp.StatusCode != 200 || ing["name"] != "web" {
		t.Fatalf("get: %d %v", resp.StatusCode, ing)
	}
	resp = e.do("DELETE", "/ingresses/web", read, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 403 || code != "forbidden" {
		t.Fatalf("delete with instance:read: %d", resp.StatusCode)
	}
	resp = e.do("DELETE", "/ingresses/web", write, "")
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	for _, p := range []string{"GET", "DELETE"} {
		resp = e.do(p, "/ingresses/web", mint(t), "")
		if code, _ := errBody(t, resp); resp.StatusCode != 404 || code != "not_found" {
			t.Fatalf("%s deleted: %d %s", p, resp.StatusCode, code)
		}
	}
	// Bad bodies are refused by the spec before the manager sees them.
	n := len(fi.reqs)
	for _, body := range []string{
		`{"name":"x","rules":[]}`,
		`{"name":"x"}`,
		`{"name":"X","rules":[{"match":{},"target":{"instance":"a","port":1}}]}`,
		`{"name":"x","rules":[{"match":{"port":0},"target":{"instance":"a","port":1}}]}`,
		`{"name":"x","rules":[{"match":{"port":70000},"target":{"instance":"a","port":1}}]}`,
		`{"name":"x","rules":[{"match":{},"target":{"instance":"a"}}]}`,
		`{"name":"x","rules":[{"match":{},"target":{"instance":"","port":1}}]}`,
		`{"name":"x","rules":[{"match":{"host":"a"},"target":{"instance":"a","port":1}}]}`,
		`{"name":"x","rules":[{"target":{"instance":"a","port":1}}]}`,
		`{"name":"x","rules":[{"match":{"port":"80"},"target":{"instance":"a","port":1}}]}`,
	} {
		resp := e.do("POST", "/ingresses", write, body)
		if code, _ := errBody(t, resp); resp.StatusCode != 400 || code != "invalid_request" {
			t.Errorf("create %s: %d %s", body, resp.StatusCode, code)
		}
	}
	if len(fi.reqs) != n {
		t.Fatal("a bad body reached the manager")
	}
}

// TestIngressErrorsFromRealManager maps the real ingress manager's errors:
// what the spec cannot express (hostname syntax, duplicate rules) is 400,
// a host port already in use is 409.
func TestIngressErrorsFromRealManager(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	im, err := ingress.New(ctx, ingress.Config{StateDir: t.TempDir(), ListenAddress: "127.0.0.1"},
		ingress.ResolverFunc(func(context.Context, string, int) (string, error) { return "", fmt.Errorf("no") }), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := strconv.Itoa(busy.Addr().(*net.TCPAddr).Port)
	e := newTestEnv(t, func(o *Options) { o.Ingresses = im })
	tok := mint(t)
	rule := func(host, port string) string {
		return `{"match":{"hostname":"` + host + `","port":` + port + `},"target":{"instance":"web","port":80}}`
	}
	for _, c := range []struct {
		body   string
		status int
		code   string
	}{
		{`{"name":"a","rules":[` + rule("a..b", busyPort) + `]}`, 400, "invalid_request"},
		{`{"name":"a","rules":[` + rule("a.*.b", busyPort) + `]}`, 400, "invalid_request"},
		{`{"name":"a","rules":[` + rule("x.com", busyPort) + "," + rule("X.com.", busyPort) + `]}`, 400, "invalid_request"},
		{`{"name":"a","rules":[` + rule("x.com", busyPort) + `]}`, 409, "conflict"},
	} {
		resp := e.do("POST", "/ingresses", tok, c.body)
		code, msg := errBody(t, resp)
		if resp.StatusCode != c.status || code != c.code {
			t.Errorf("%s: %d %s %q, want %d %s", c.body, resp.StatusCode, code, msg, c.status, c.code)
		}
	}
}

func TestIngressesNotImplemented(t *testing.T) {
	e := newTestEnv(t, nil)
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/ingresses", ""}, {"GET", "/ingresses/x", ""}, {"DELETE", "/ingresses/x", ""},
		{"POST", "/ingresses", `{"name":"x","rules":[{"match":{},"target":{"instance":"a","port":1}}]}`},
	} {
		resp := e.do(c.method, c.path, mint(t), c.body)
		if code, _ := errBody(t, resp); resp.StatusCode != 501 || code != "not_implemented" {
			t.Errorf("%s %s: %d %s", c.method, c.path, resp.StatusCode, code)
		}
	}
}

func TestInstanceNetworkField(t *testing.T) {
	e := newTestEnv(t, nil)
	in := addInstance(e, "web", state.Running)
	in.Network = &instances.NetworkInfo{Enabled: true, IP: "10.100.0.7", MAC: "02:00:0a:64:00:07"}
	addInstance(e, "bare", state.Stopped)
	tok := mint(t)
	var got map[string]any
	jsonBody(t, e.do("GET", "/instances/web", tok, ""), &got)
	if want := map[string]any{"enabled": true, "name": "default", "ip": "10.100.0.7", "mac": "02:00:0a:64:00:07"}; !reflect.DeepEqual(got["network"], want) {
		t.Fatalf("network %v", got["network"])
	}
	got = nil
	jsonBody(t, e.do("GET", "/instances/bare", tok, ""), &got)
	if _, ok := got["network"]; ok {
		t.Fatalf("network reported for an instance without one: %v", got["network"])
	}
	resp := e.do("POST", "/instances", tok, `{"name":"off","image":"busybox","network":{"enabled":false}}`)
	resp.Body.Close()
	if p := e.inst.created[len(e.inst.created)-1]; resp.StatusCode != 201 || p.NetworkEnabled == nil || *p.NetworkEnabled {
		t.Fatalf("create with network disabled: %d %+v", resp.StatusCode, p.NetworkEnabled)
	}
	resp = e.do("POST", "/instances", tok, `{"name":"dflt","image":"busybox"}`)
	resp.Body.Close()
	if p := e.inst.created[len(e.inst.created)-1]; p.NetworkEnabled != nil {
		t.Fatalf("network default: %v", *p.NetworkEnabled)
	}
	resp = e.do("POST", "/instances", tok, `{"name":"x","image":"busybox","network":{"enabled":false,"ip":"1.2.3.4"}}`)
	if code, _ := errBody(t, resp); resp.StatusCode != 400 || code != "invalid_request" {
		t.Fatalf("unknown network field: %d %s", resp.StatusCode, code)
	}
}
