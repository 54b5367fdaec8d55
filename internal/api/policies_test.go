package api

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"hypeman/internal/api/gen"
	"hypeman/internal/auth"
	"hypeman/internal/health"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/phases"
	"hypeman/internal/restart"
)

func TestCreateWithPolicies(t *testing.T) {
	e := newTestEnv(t, nil)
	tok := mint(t)
	resp := e.do("POST", "/instances", tok, `{"name":"web","image":"busybox","network":{"enabled":false},
		"restart_policy":{"policy":"on_failure","backoff":"2s","max_attempts":5},
		"health_check":{"type":"http","http":{"port":8080,"path":"/healthz"},"interval":"5s","failure_threshold":2}}`)
	var in map[string]any
	jsonBody(t, resp, &in)
	if resp.StatusCode != 201 {
		t.Fatalf("create: %d %v", resp.StatusCode, in)
	}
	p := e.inst.created[0]
	wantPolicy := restart.Policy{Policy: restart.OnFailure, Backoff: 2 * time.Second, MaxBackoff: restart.DefaultMaxBackoff,
		MaxAttempts: 5, StableAfter: restart.DefaultStableAfter}
	if p.RestartPolicy == nil || *p.RestartPolicy != wantPolicy {
		t.Fatalf("restart policy %+v, want %+v", p.RestartPolicy, wantPolicy)
	}
	wantCheck := health.DefaultCheck(health.HTTP)
	wantCheck.Port, wantCheck.Path, wantCheck.Interval, wantCheck.FailureThreshold = 8080, "/healthz", 5*time.Second, 2
	if p.HealthCheck == nil || !p.HealthCheck.Equal(wantCheck) {
		t.Fatalf("health check %+v, want %+v", p.HealthCheck, wantCheck)
	}
	if p.NetworkEnabled == nil || *p.NetworkEnabled {
		t.Fatalf("network.enabled false not passed: %v", p.NetworkEnabled)
	}
	// The response shows the settings with every default spelled out.
	rp, _ := json.Marshal(in["restart_policy"])
	if string(rp) != `{"backoff":"2s","max_attempts":5,"max_backoff":"5m","policy":"on_failure","stable_after":"10m"}` {
		t.Errorf("restart_policy in response: %s", rp)
	}
	hc, _ := json.Marshal(in["health_check"])
	if string(hc) != `{"failure_threshold":2,"http":{"expected_status":200,"path":"/healthz","port":8080,"scheme":"http"},"interval":"5s","start_period":"30s","success_threshold":1,"timeout":"2s","type":"http"}` {
		t.Errorf("health_check in response: %s", hc)
	}
	if hs, _ := in["health_status"].(map[string]any); hs["status"] != "unknown" {
		t.Errorf("health_status in response: %v", in["health_status"])
	}

	// Without the fields: nil params (manager defaults), nothing shown.
	resp = e.do("POST", "/instances", tok, `{"name":"plain","image":"busybox"}`)
	in = nil // decode into a fresh map
	jsonBody(t, resp, &in)
	if p := e.inst.created[1]; resp.StatusCode != 201 || p.RestartPolicy != nil || p.HealthCheck != nil {
		t.Fatalf("create without policies: %d %+v", resp.StatusCode, p)
	}
	for _, k := range []string{"restart_policy", "restart_status", "health_check", "health_status"} {
		if _, ok := in[k]; ok {
			t.Errorf("%s present without a setting: %v", k, in)
		}
	}
}

func TestUpdateInstance(t *testing.T) {
	e := newTestEnv(t, nil)
	tok := mint(t)
	e.inst.add(&instances.Instance{ID: "i1", Name: "web", State: state.Running, CreatedAt: time.Now().UTC()})

	// Only the restart policy: the health check is left alone (nil).
	resp := e.do("PATCH", "/instances/web", tok, `{"restart_policy":{"policy":"always","backoff":"1s","max_backoff":"1s"}}`)
	var in map[string]any
	jsonBody(t, resp, &in)
	if resp.StatusCode != 200 || in["id"] != "i1" {
		t.Fatalf("patch: %d %v", resp.StatusCode, in)
	}
	u := e.inst.updated[0]
	want := restart.Policy{Policy: restart.Always, Backoff: time.Second, MaxBackoff: time.Second, StableAfter: restart.DefaultStableAfter}
	if u.RestartPolicy == nil || *u.RestartPolicy != want || u.HealthCheck != nil {
		t.Fatalf("update params %+v / %+v", u.RestartPolicy, u.HealthCheck)
	}
	if rp, _ := in["restart_policy"].(map[string]any); rp["policy"] != "always" || rp["max_backoff"] != "1s" {
		t.Fatalf("restart_policy in response: %v", in["restart_policy"])
	}

	// Only the health check: an exec check, then {} to remove it.
	resp = e.do("PATCH", "/instances/i1", tok, `{"health_check":{"type":"exec","exec":{"command":["pg_isready","-q"]}}}`)
	in = nil // decode into a fresh map
	jsonBody(t, resp, &in)
	u = e.inst.updated[1]
	if resp.StatusCode != 200 || u.RestartPolicy != nil || u.HealthCheck == nil ||
		u.HealthCheck.Type != health.Exec || !reflect.DeepEqual(u.HealthCheck.Command, []string{"pg_isready", "-q"}) ||
		u.HealthCheck.Interval != health.DefaultInterval {
		t.Fatalf("patch exec check: %d %+v %+v", resp.StatusCode, u.RestartPolicy, u.HealthCheck)
	}
	if hc, _ := in["health_check"].(map[string]any); hc["type"] != "exec" || hc["http"] != nil || hc["exec"] == nil {
		t.Fatalf("health_check in response: %v", in["health_check"])
	}
	resp = e.do("PATCH", "/instances/i1", tok, `{"health_check":{}}`)
	in = nil // decode into a fresh map
	jsonBody(t, resp, &in)
	u = e.inst.updated[2]
	if resp.StatusCode != 200 || u.HealthCheck == nil || !u.HealthCheck.IsZero() {
		t.Fatalf("patch {}: %d %+v", resp.StatusCode, u.HealthCheck)
	}
	if _, ok := in["health_check"]; ok {
		t.Fatalf("health_check still shown after removal: %v", in)
	}
	if hs, _ := in["health_status"].(map[string]any); hs["status"] != "disabled" {
		t.Fatalf("health_status after removal: %v", in["health_status"])
	}
	// {"policy":"never"} turns restarts off: restart_policy disappears.
	resp = e.do("PATCH", "/instances/i1", tok, `{"restart_policy":{"policy":"never"},"health_check":{"type":"tcp","tcp":{"port":5432}}}`)
	in = nil // decode into a fresh map
	jsonBody(t, resp, &in)
	u = e.inst.updated[3]
	if resp.StatusCode != 200 || u.RestartPolicy == nil || u.RestartPolicy.Kind() != restart.Never ||
		u.HealthCheck == nil || u.HealthCheck.Type != health.TCP || u.HealthCheck.Port != 5432 {
		t.Fatalf("patch never+tcp: %d %+v %+v", resp.StatusCode, u.RestartPolicy, u.HealthCheck)
	}
	if _, ok := in["restart_policy"]; ok {
		t.Fatalf("never policy shown: %v", in["restart_policy"])
	}

	// Unknown instance: 404 from the manager.
	resp = e.do("PATCH", "/instances/nope", tok, `{"restart_policy":{"policy":"always"}}`)
	if code, msg := errBody(t, resp); resp.StatusCode != 404 || code != "not_found" || !strings.Contains(msg, "nope") {
		t.Fatalf("patch missing: %d %s %s", resp.StatusCode, code, msg)
	}
	// Manager errors keep their mapping (a typed field error is a 400).
	e.inst.errOn["Update"] = &restart.FieldError{Field: "restart_policy.max_backoff", Reason: "too small"}
	resp = e.do("PATCH", "/instances/web", tok, `{"restart_policy":{"policy":"always"}}`)
	if code, msg := errBody(t, resp); resp.StatusCode != 400 || code != "invalid_request" || msg != "invalid restart_policy.max_backoff: too small" {
		t.Fatalf("manager field error: %d %s %q", resp.StatusCode, code, msg)
	}
	e.inst.errOn["Update"] = &health.FieldError{Field: "health_check.timeout", Reason: "too long"}
	resp = e.do("PATCH", "/instances/web", tok, `{"health_check":{"type":"tcp","tcp":{"port":1}}}`)
	if code, msg := errBody(t, resp); resp.StatusCode != 400 || code != "invalid_request" || msg != "invalid health_check.timeout: too long" {
		t.Fatalf("manager field error: %d %s %q", resp.StatusCode, code, msg)
	}
}

func TestUpdateInstanceScopes(t *testing.T) {
	e := newTestEnv(t, nil)
	e.inst.add(&instances.Instance{ID: "i1", Name: "web", State: state.Running})
	body := `{"restart_policy":{"policy":"on_failure"}}`
	for _, tok := range []string{mint(t, auth.InstanceRead), mint(t, auth.InstanceDelete, auth.ImageWrite)} {
		resp := e.do("PATCH", "/instances/web", tok, body)
		if code, msg := errBody(t, resp); resp.StatusCode != 403 || code != "forbidden" || msg != "missing required scope: instance:write" {
			t.Fatalf("patch without instance:write: %d %s %q", resp.StatusCode, code, msg)
		}
	}
	if resp := e.do("PATCH", "/instances/web", "", body); resp.StatusCode != 401 {
		t.Fatalf("patch without a token: %d", resp.StatusCode)
	}
	if len(e.inst.updated) != 0 {
		t.Fatal("a refused PATCH reached the manager")
	}
	for _, tok := range []string{mint(t, auth.InstanceWrite), mint(t, "instance:*"), mint(t)} {
		resp := e.do("PATCH", "/instances/web", tok, body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("patch with write access: %d", resp.StatusCode)
		}
	}
}

// TestPolicyRoundTrip: every kind of check and a full restart policy
// survive domain → wire → domain unchanged, and the statuses show every
// field with hypeman's names.
func TestPolicyRoundTrip(t *testing.T) {
	at := func(s int) time.Time { return time.Date(2025, 6, 1, 12, 0, s, 123456789, time.UTC) }
	http := health.DefaultCheck(health.HTTP)
	http.Port, http.Path, http.Scheme, http.ExpectedStatus, http.StartPeriod = 8080, "/healthz?x=1", "https", 204, 0
	exec := health.DefaultCheck(health.Exec)
	exec.Command, exec.WorkingDir, exec.Interval, exec.Timeout = []string{"sh", "-c", "test -f /ready"}, "/app", 90*time.Second, 1500*time.Millisecond
	tcp := health.DefaultCheck(health.TCP)
	tcp.Port, tcp.FailureThreshold, tcp.SuccessThreshold = 5432, 7, 2
	policy := restart.Policy{Policy: restart.Always, Backoff: 250 * time.Millisecond, MaxBackoff: 90 * time.Minute, MaxAttempts: 12, StableAfter: 36 * time.Hour}
	rs := restart.Status{Restarts: 5, Attempts: 3, LastAttemptAt: at(1), NextAttemptAt: at(2), BlockedReason: restart.BlockedMaxAttempts, LastReason: restart.ReasonHealthCheck}
	hs := health.Status{Status: health.Unhealthy, ConsecutiveSuccesses: 0, ConsecutiveFailures: 4,
		LastCheckAt: at(3), LastSuccessAt: at(4), LastFailureAt: at(5), LastError: "HTTP status 503, want 204"}
	ready := tcp
	ready.ReportOnly = true
	for _, c := range []health.Check{http, exec, tcp, ready} {
		in := &instances.Instance{ID: "i", Name: "n", State: state.Running, RestartPolicy: &policy, RestartStatus: &rs, HealthCheck: &c, HealthStatus: &hs}
		api := toAPIInstance(in, phases.View{})
		back, err := healthCheckFromAPI(api.HealthCheck)
		if err != nil || !back.Equal(c) {
			t.Errorf("health check round trip: %+v %v, want %+v", back, err, c)
		}
		// report_only is written only when set (upstream's checks have none).
		if b, _ := json.Marshal(api.HealthCheck); strings.Contains(string(b), `"report_only":true`) != c.ReportOnly || strings.Contains(string(b), `"report_only":false`) {
			t.Errorf("health check JSON %s (report_only %v)", b, c.ReportOnly)
		}
		backPolicy, err := restartPolicyFromAPI(api.RestartPolicy)
		if err != nil || *backPolicy != policy {
			t.Errorf("policy round trip: %+v %v", backPolicy, err)
		}
		b, _ := json.Marshal(api.HealthStatus)
		want := `{"consecutive_failures":4,"consecutive_successes":0,"last_checked_at":"2025-06-01T12:00:03.123456789Z","last_error":"HTTP status 503, want 204","last_failure_at":"2025-06-01T12:00:05.123456789Z","last_success_at":"2025-06-01T12:00:04.123456789Z","status":"unhealthy"}`
		if string(b) != want {
			t.Errorf("health status:\n got %s\nwant %s", b, want)
		}
		b, _ = json.Marshal(api.RestartStatus)
		want = `{"attempts":3,"blocked_reason":"max_attempts_exceeded","last_attempt_at":"2025-06-01T12:00:01.123456789Z","last_reason":"health_check_failed","next_attempt_at":"2025-06-01T12:00:02.123456789Z","restarts":5}`
		if string(b) != want {
			t.Errorf("restart status:\n got %s\nwant %s", b, want)
		}
	}
	// A bare status (the zero health.Status fields that are not omitted).
	in := &instances.Instance{HealthStatus: &health.Status{Status: health.Disabled}, RestartStatus: &restart.Status{BlockedReason: restart.BlockedManualStop}}
	api := toAPIInstance(in, phases.View{})
	b, _ := json.Marshal(api.HealthStatus)
	if string(b) != `{"consecutive_failures":0,"consecutive_successes":0,"status":"disabled"}` {
		t.Errorf("bare health status: %s", b)
	}
	b, _ = json.Marshal(api.RestartStatus)
	if string(b) != `{"attempts":0,"blocked_reason":"manual_stop","restarts":0}` {
		t.Errorf("bare restart status: %s", b)
	}
	// No check and "none" both mean no check.
	for _, body := range []*gen.HealthCheck{{}, {Type: ptrTo(gen.HealthCheckNone)}} {
		c, err := healthCheckFromAPI(body)
		if err != nil || !c.IsZero() {
			t.Errorf("%+v: %+v %v", body, c, err)
		}
	}
}

func ptrTo[T any](v T) *T { return &v }

func jsonEqual(t *testing.T, a, b json.RawMessage) bool {
	t.Helper()
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(x, y)
}

// policyBadInput are restart_policy / health_check values that are refused,
// with the field the message must name. They run against the real manager
// both in a create and in a PATCH, so the spec's checks and the packages'
// (decode and Validate) are both covered.
var policyBadInput = []struct {
	name, field, value, inMsg string
}{
	{"policy unknown", "restart_policy", `{"policy":"sometimes"}`, "policy"},
	{"policy not object", "restart_policy", `"always"`, "restart_policy"},
	{"policy null", "restart_policy", `null`, "restart_policy"},
	{"policy unknown field", "restart_policy", `{"policy":"always","delay":"5s"}`, "delay"},
	{"backoff garbage", "restart_policy", `{"policy":"always","backoff":"soon"}`, "restart_policy.backoff"},
	{"backoff number", "restart_policy", `{"policy":"always","backoff":5}`, "backoff"},
	{"backoff unitless", "restart_policy", `{"policy":"always","backoff":"5"}`, "restart_policy.backoff"},
	{"backoff zero", "restart_policy", `{"policy":"always","backoff":"0s"}`, "restart_policy.backoff"},
	{"backoff negative", "restart_policy", `{"policy":"on_failure","backoff":"-5s"}`, "restart_policy.backoff"},
	{"max_backoff below backoff", "restart_policy", `{"policy":"always","backoff":"10s","max_backoff":"5s"}`, "restart_policy.max_backoff"},
	{"max_backoff garbage", "restart_policy", `{"policy":"always","max_backoff":"1y"}`, "restart_policy.max_backoff"},
	{"max_attempts negative", "restart_policy", `{"policy":"always","max_attempts":-1}`, "max_attempts"},
	{"max_attempts string", "restart_policy", `{"policy":"always","max_attempts":"3"}`, "max_attempts"},
	{"max_attempts float", "restart_policy", `{"policy":"always","max_attempts":1.5}`, "max_attempts"},
	{"stable_after zero", "restart_policy", `{"policy":"always","stable_after":"0s"}`, "restart_policy.stable_after"},
	{"stable_after too long", "restart_policy", `{"policy":"always","stable_after":"` + strings.Repeat("1", 40) + `h"}`, "stable_after"},
	{"never with bad backoff", "restart_policy", `{"policy":"never","backoff":"0s"}`, "restart_policy.backoff"},

	{"type unknown", "health_check", `{"type":"udp","tcp":{"port":53}}`, "type"},
	{"flat port (old shape)", "health_check", `{"type":"tcp","port":80}`, "port"},
	{"object without type", "health_check", `{"tcp":{"port":80}}`, "health_check.type"},
	{"check null", "health_check", `null`, "health_check"},
	{"check not object", "health_check", `[]`, "health_check"},
	{"check unknown field", "health_check", `{"type":"tcp","tcp":{"port":80},"host":"x"}`, "host"},
	{"http without http", "health_check", `{"type":"http"}`, "health_check.http"},
	{"http no port", "health_check", `{"type":"http","http":{}}`, "port"},
	{"tcp port zero", "health_check", `{"type":"tcp","tcp":{"port":0}}`, "port"},
	{"tcp port too big", "health_check", `{"type":"tcp","tcp":{"port":70000}}`, "port"},
	{"port string", "health_check", `{"type":"tcp","tcp":{"port":"80"}}`, "port"},
	{"exec with http", "health_check", `{"type":"exec","exec":{"command":["true"]},"http":{"port":80}}`, "health_check.http"},
	{"http relative path", "health_check", `{"type":"http","http":{"port":80,"path":"healthz"}}`, "health_check.http.path"},
	{"http path with space", "health_check", `{"type":"http","http":{"port":80,"path":"/a b"}}`, "health_check.http.path"},
	{"http bad scheme", "health_check", `{"type":"http","http":{"port":80,"scheme":"ftp"}}`, "scheme"},
	{"tcp with http", "health_check", `{"type":"tcp","tcp":{"port":80},"http":{"port":80}}`, "health_check.http"},
	{"expected_status low", "health_check", `{"type":"http","http":{"port":80,"expected_status":99}}`, "expected_status"},
	{"exec no exec", "health_check", `{"type":"exec"}`, "health_check.exec"},
	{"report_only not a boolean", "health_check", `{"type":"tcp","tcp":{"port":80},"report_only":"yes"}`, "report_only"},
	{"report_only without type", "health_check", `{"report_only":true}`, "health_check.type"},
	{"exec no command", "health_check", `{"type":"exec","exec":{}}`, "command"},
	{"exec empty command", "health_check", `{"type":"exec","exec":{"command":[]}}`, "command"},
	{"exec blank argv0", "health_check", `{"type":"exec","exec":{"command":[" "]}}`, "health_check.exec.command"},
	{"exec relative working_dir", "health_check", `{"type":"exec","exec":{"command":["true"],"working_dir":"app"}}`, "health_check.exec.working_dir"},
	{"exec command string", "health_check", `{"type":"exec","exec":{"command":"pg_isready"}}`, "command"},
	{"interval too short", "health_check", `{"type":"tcp","tcp":{"port":80},"interval":"500ms","timeout":"100ms"}`, "health_check.interval"},
	{"interval garbage", "health_check", `{"type":"tcp","tcp":{"port":80},"interval":"often"}`, "health_check.interval"},
	{"timeout above interval", "health_check", `{"type":"tcp","tcp":{"port":80},"interval":"5s","timeout":"6s"}`, "health_check.timeout"},
	{"timeout zero", "health_check", `{"type":"tcp","tcp":{"port":80},"timeout":"0s"}`, "health_check.timeout"},
	{"start_period negative", "health_check", `{"type":"tcp","tcp":{"port":80},"start_period":"-1s"}`, "health_check.start_period"},
	{"failure_threshold zero", "health_check", `{"type":"tcp","tcp":{"port":80},"failure_threshold":0}`, "failure_threshold"},
	{"success_threshold zero", "health_check", `{"type":"tcp","tcp":{"port":80},"success_threshold":0}`, "success_threshold"},
}

func TestPolicyBadInput(t *testing.T) {
	h, tok := newRealEnv(t)
	for _, c := range policyBadInput {
		t.Run(c.name, func(t *testing.T) {
			for _, req := range []struct{ method, path, body string }{
				{"POST", "/instances", `{"name":"web","image":"busybox","` + c.field + `":` + c.value + `}`},
				{"PATCH", "/instances/x", `{"` + c.field + `":` + c.value + `}`},
			} {
				rec := serve(h, req.method, req.path, tok, "application/json", []byte(req.body))
				code, msg := checkErrorShape(t, rec)
				t.Logf("%s: %d %s", req.method, rec.Code, msg)
				if rec.Code != 400 || code != "invalid_request" || !strings.Contains(msg, c.inMsg) {
					t.Errorf("%s %s %s: %d %s %q, want 400 invalid_request naming %q", req.method, req.path, req.body, rec.Code, code, msg, c.inMsg)
				}
			}
		})
	}
}

// TestUpdateBodyBadInput: the PATCH body itself, and valid bodies that end
// at the missing instance (validation passed).
func TestUpdateBodyBadInput(t *testing.T) {
	h, tok := newRealEnv(t)
	cases := []struct {
		body        string
		status      int
		code, inMsg string
	}{
		{`{}`, 400, "invalid_request", ""},
		{`{"policy":"always"}`, 400, "invalid_request", "policy"},
		{`{"restart_policy":{"policy":"always"},"name":"x"}`, 400, "invalid_request", "name"},
		{`[]`, 400, "invalid_request", ""},
		{`null`, 400, "invalid_request", ""},
		{``, 400, "invalid_request", ""},
		{`{"restart_policy":{"policy":"always"}}`, 404, "not_found", "x"},
		{`{"restart_policy":{"policy":"never"}}`, 404, "not_found", "x"},
		{`{"health_check":{}}`, 404, "not_found", "x"},
		{`{"health_check":{"type":"none"}}`, 404, "not_found", "x"},
		{`{"restart_policy":{}}`, 404, "not_found", "x"},
		{`{"restart_policy":{"backoff":"5s"}}`, 404, "not_found", "x"},
		{`{"health_check":{"type":"http","http":{"port":8080,"path":"/healthz","scheme":"https","expected_status":204},"interval":"1s","timeout":"1s","start_period":"0s","failure_threshold":1,"success_threshold":5}}`, 404, "not_found", "x"},
		{`{"restart_policy":{"policy":"on_failure","backoff":"1s","max_backoff":"1s","max_attempts":0,"stable_after":"1m"},"health_check":{"type":"exec","exec":{"command":["true"],"working_dir":"/app"}}}`, 404, "not_found", "x"},
		{`{"env":{"A":"b"}}`, 400, "unsupported", "env"},
		{`{"auto_standby":{"enabled":true,"idle_timeout":"soon"}}`, 400, "invalid_request", "auto_standby.idle_timeout"},
		{`{"auto_standby":{"ignore_source_cidrs":["10.0.0.0/33"]}}`, 400, "invalid_request", "auto_standby.ignore_source_cidrs[0]"},
		{`{"auto_standby":{"enabled":true,"idle_timeout":"5s"}}`, 404, "not_found", "x"},
		{`{"ttl":"-1h"}`, 400, "invalid_request", "ttl"},
		{`{"ttl":"1h","expires_at":"2030-01-01T00:00:00Z"}`, 400, "invalid_request", "mutually exclusive"},
		{`{"ttl":"1h"}`, 404, "not_found", "x"},
		{`{"ttl":"0s"}`, 404, "not_found", "x"},
	}
	for _, c := range cases {
		rec := serve(h, "PATCH", "/instances/x", tok, "application/json", []byte(c.body))
		code, msg := checkErrorShape(t, rec)
		if rec.Code != c.status || code != c.code || !strings.Contains(msg, c.inMsg) {
			t.Errorf("PATCH %s: %d %s %q, want %d %s containing %q", c.body, rec.Code, code, msg, c.status, c.code, c.inMsg)
		}
	}
	// A valid create with both settings passes validation and ends at the
	// (unresolvable) image.
	rec := serve(h, "POST", "/instances", tok, "application/json", []byte(`{"name":"web","image":"busybox",
		"restart_policy":{"policy":"always"},"health_check":{"type":"tcp","tcp":{"port":22}}}`))
	if code, _ := checkErrorShape(t, rec); rec.Code != http.StatusNotFound || code != "not_found" {
		t.Fatalf("valid create: %d %s", rec.Code, rec.Body)
	}
}

// FuzzUpdateInstance: no PATCH body gets a 5xx or an error body that is not
// {code, message}, and none succeeds (the instance does not exist).
func FuzzUpdateInstance(f *testing.F) {
	for _, s := range []string{
		`{"restart_policy":{"policy":"on_failure","backoff":"5s","max_backoff":"5m","max_attempts":3,"stable_after":"10m"}}`,
		`{"health_check":{"type":"http","http":{"port":8080,"path":"/healthz"},"interval":"10s","timeout":"2s"}}`,
		`{"health_check":{"type":"exec","exec":{"command":["sh","-c","true"]}}}`,
		`{"health_check":{"type":"tcp","tcp":{"port":1},"start_period":"1h"}}`,
		`{"health_check":{}}`, `{"restart_policy":{"policy":"never"}}`,
		`{"restart_policy":{"policy":"always","backoff":"9223372036854775807ns"}}`,
		`{"restart_policy":{"policy":"always","backoff":"99999999999h"}}`,
		`{"health_check":{"type":"http","http":{"port":80,"path":"/\u0000"}}}`,
		`{"health_check":{"type":"exec","exec":{"command":["\u0000"]}}}`,
		`{"restart_policy":{"policy":"always","max_attempts":1e20}}`,
		`{}`, `[]`, `null`, ``, `{`,
	} {
		f.Add(s)
	}
	h, tok := newRealEnv(f)
	f.Fuzz(func(t *testing.T, body string) {
		rec := serve(h, "PATCH", "/instances/x", tok, "application/json", []byte(body))
		if rec.Code < 400 {
			t.Fatalf("PATCH %q: %d", body, rec.Code)
		}
		checkErrorShape(t, rec)
	})
}

// An interval shorter than the default timeout, given alone, takes the
// timeout down with it instead of failing; an explicit timeout is kept
// (and checked).
func TestHealthCheckShortIntervalAlone(t *testing.T) {
	one := "1s"
	c, err := healthCheckFromAPI(&gen.HealthCheck{Type: ptrTo(gen.HealthCheckTCPType), Tcp: &gen.HealthCheckTCP{Port: 80}, Interval: &one})
	if err != nil || c.Interval != time.Second || c.Timeout != time.Second || c.Validate() != nil {
		t.Fatalf("interval 1s alone: %+v %v", c, err)
	}
	five := "5s"
	c, err = healthCheckFromAPI(&gen.HealthCheck{Type: ptrTo(gen.HealthCheckTCPType), Tcp: &gen.HealthCheckTCP{Port: 80}, Interval: &one, Timeout: &five})
	if err != nil || c.Timeout != 5*time.Second || c.Validate() == nil {
		t.Fatalf("explicit timeout above interval: %+v %v (want kept and refused)", c, err)
	}
}
