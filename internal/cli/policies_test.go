package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"hypeman/internal/api"
	"hypeman/internal/health"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/restart"
)

// jsonOf re-encodes a decoded body part for comparison with a literal.
func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRunSendsRestartAndHealthFlags(t *testing.T) {
	f := newFake(t)
	f.handle("POST /instances", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, instanceJSON(instID, "web", "Initializing", testNow, ""))
	})
	cases := []struct {
		args                  []string
		policy, check, netVal string // JSON of the body fields ("" = absent)
	}{
		{
			args: []string{"--restart", "on-failure", "--restart-max-attempts", "5", "--restart-backoff", "2s",
				"--restart-max-backoff", "1m", "--restart-stable-after", "30m",
				"--health-http", ":8080/healthz?full=1", "--health-interval", "5s", "--health-timeout", "1500ms",
				"--health-start-period", "1m", "--health-retries", "2", "--health-expected-status", "204", "--no-network"},
			policy: `{"backoff":"2s","max_attempts":5,"max_backoff":"1m","policy":"on_failure","stable_after":"30m"}`,
			check:  `{"failure_threshold":2,"http":{"expected_status":204,"path":"/healthz?full=1","port":8080},"interval":"5s","start_period":"1m","timeout":"1500ms","type":"http"}`,
			netVal: `{"enabled":false}`,
		},
		{
			args:   []string{"--restart", "always", "--restart-max-attempts", "0", "--health-tcp", "localhost:5432"},
			policy: `{"max_attempts":0,"policy":"always"}`,
			check:  `{"tcp":{"port":5432},"type":"tcp"}`,
		},
		{
			args:  []string{"--health-cmd", `pg_isready -h "db host" -U 'a b' --x=\$y`},
			check: `{"exec":{"command":["pg_isready","-h","db host","-U","a b","--x=$y"]},"type":"exec"}`,
		},
		{
			args:   []string{"--restart", "always", "--health-tcp", ":8080", "--health-report-only"},
			policy: `{"policy":"always"}`,
			check:  `{"report_only":true,"tcp":{"port":8080},"type":"tcp"}`,
		},
		{args: []string{"--restart", "never"}, policy: `{"policy":"never"}`},
		{args: []string{"--health-http", "http://127.0.0.1:80"}, check: `{"http":{"port":80},"type":"http"}`},
		{args: nil},
	}
	for i, c := range cases {
		args := append(append([]string{"run", "-d", "--name", "web"}, c.args...), "busybox", "--restart", "x")
		if res := f.run(args...); res.code != 0 {
			t.Fatalf("%v:\n%v", c.args, res)
		}
		posts := f.requests("POST", "/instances")
		body := mustJSON(t, posts[i].Body)
		for _, fld := range []struct{ key, want string }{{"restart_policy", c.policy}, {"health_check", c.check}, {"network", c.netVal}} {
			v, ok := body[fld.key]
			switch {
			case fld.want == "" && ok:
				t.Errorf("%v: %s sent without its flag: %s", c.args, fld.key, jsonOf(t, v))
			case fld.want != "" && jsonOf(t, v) != fld.want:
				t.Errorf("%v: %s = %s, want %s", c.args, fld.key, jsonOf(t, v), fld.want)
			}
		}
		// Flags after IMAGE still belong to the program.
		if cmd := jsonOf(t, body["cmd"]); cmd != `["--restart","x"]` {
			t.Errorf("cmd %s", cmd)
		}
	}
}

func TestRunPolicyUsageErrors(t *testing.T) {
	f := newFake(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--restart", "sometimes"}, `invalid --restart "sometimes": use never, on_failure or always`},
		{[]string{"--restart-max-attempts", "3"}, "--restart-max-attempts needs --restart on_failure or always"},
		{[]string{"--restart", "never", "--restart-backoff", "5s"}, "--restart-backoff has no effect with --restart never"},
		{[]string{"--restart", "always", "--restart-backoff", "5"}, `invalid --restart-backoff "5": want a duration`},
		{[]string{"--restart", "always", "--restart-stable-after", "soon"}, `invalid --restart-stable-after "soon"`},
		{[]string{"--restart", "always", "--restart-max-attempts", "-1"}, "--restart-max-attempts must be 0 (unlimited) or more"},
		{[]string{"--health-http", ":8080/", "--health-tcp", ":22"}, "--health-http and --health-tcp cannot be combined"},
		{[]string{"--health-interval", "5s"}, "--health-interval needs a health check"},
		{[]string{"--health-report-only"}, "--health-report-only needs a health check"},
		{[]string{"--health-http", "example.com:80/"}, "the check always targets the instance itself"},
		{[]string{"--health-http", "https://localhost:443/"}, "HTTPS is not supported"},
		{[]string{"--health-http", ":0/x"}, "want a port between 1 and 65535"},
		{[]string{"--health-http", ":http/x"}, "want a port between 1 and 65535"},
		{[]string{"--health-http", ":80/a b"}, "must not contain whitespace"},
		{[]string{"--health-tcp", ":99999"}, "want a port between 1 and 65535"},
		{[]string{"--health-tcp", "[::1"}, "want [HOST]:PORT"},
		{[]string{"--health-tcp", ":22", "--health-expected-status", "200"}, "--health-expected-status only applies to --health-http"},
		{[]string{"--health-http", ":80", "--health-expected-status", "42"}, "--health-expected-status must be an HTTP status"},
		{[]string{"--health-cmd", "curl -f localhost || exit 1"}, `'|' needs a shell`},
		{[]string{"--health-cmd", `echo "$HOME"`}, `'$' needs a shell`},
		{[]string{"--health-cmd", "echo 'oops"}, "unterminated single quote"},
		{[]string{"--health-cmd", "   "}, "no command"},
		{[]string{"--health-tcp", ":22", "--health-retries", "0"}, "--health-retries must be at least 1"},
		{[]string{"--health-tcp", ":22", "--health-timeout", "1x"}, `invalid --health-timeout "1x"`},
	} {
		res := f.run(append(append([]string{"run", "-d"}, tc.args...), "busybox")...)
		if res.code != 1 || !strings.Contains(res.stderr, tc.want) || !strings.Contains(res.stderr, "--help' for usage") {
			t.Errorf("%v: want %q\n%v", tc.args, tc.want, res)
		}
	}
	if n := len(f.requests("POST", "/")); n != 0 {
		t.Errorf("%d requests sent for invalid command lines", n)
	}
}

func TestUpdateCommands(t *testing.T) {
	f := newFake(t)
	f.handle("PATCH /instances/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "web" {
			writeJSON(w, http.StatusNotFound, `{"code":"not_found","message":"instance not found: `+r.PathValue("id")+`"}`)
			return
		}
		writeJSON(w, http.StatusOK, instanceJSON(instID, "web", "Running", testNow, `"restart_policy":{"policy":"always"}`))
	})
	cases := []struct {
		args []string
		body string
	}{
		{[]string{"update", "restart-policy", "web", "--policy", "on_failure", "--max-attempts", "5", "--backoff", "1s", "--max-backoff", "1s", "--stable-after", "1h"},
			`{"restart_policy":{"backoff":"1s","max_attempts":5,"max_backoff":"1s","policy":"on_failure","stable_after":"1h"}}`},
		{[]string{"update", "restart-policy", "web", "--policy", "never"}, `{"restart_policy":{"policy":"never"}}`},
		{[]string{"update", "health-check", "web", "--http", ":8080/healthz", "--interval", "5s", "--retries", "2"},
			`{"health_check":{"failure_threshold":2,"http":{"path":"/healthz","port":8080},"interval":"5s","type":"http"}}`},
		{[]string{"update", "health-check", "web", "--tcp", "5432", "--start-period", "0s", "--timeout", "1s"},
			`{"health_check":{"start_period":"0s","tcp":{"port":5432},"timeout":"1s","type":"tcp"}}`},
		{[]string{"update", "health-check", "web", "--cmd", `sh -c 'test -f /ready'`},
			`{"health_check":{"exec":{"command":["sh","-c","test -f /ready"]},"type":"exec"}}`},
		{[]string{"update", "health-check", "web", "--none"}, `{"health_check":{"type":"none"}}`},
	}
	for i, c := range cases {
		res := f.run(c.args...)
		if res.code != 0 || res.stdout != "web\n" {
			t.Fatalf("%v:\n%v", c.args, res)
		}
		patches := f.requests("PATCH", "/instances/")
		if got := jsonOf(t, mustJSON(t, patches[i].Body)); got != c.body || patches[i].Path != "/instances/web" {
			t.Errorf("%v: PATCH %s %s, want %s", c.args, patches[i].Path, got, c.body)
		}
	}
	// --format json prints the instance; errors carry the server's message.
	res := f.run("--format", "json", "update", "restart-policy", "web", "--policy", "always")
	if res.code != 0 || !strings.Contains(res.stdout, `"restart_policy":{"policy":"always"}`) {
		t.Fatal(res)
	}
	res = f.run("update", "health-check", "nope", "--none")
	if res.code != 1 || !strings.Contains(res.stderr, "Error: instance not found: nope") {
		t.Fatal(res)
	}
	sent := len(f.requests("PATCH", "/"))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"update", "restart-policy", "web"}, "--policy is required"},
		{[]string{"update", "restart-policy", "web", "--max-attempts", "2"}, "--policy is required"},
		{[]string{"update", "restart-policy", "web", "--policy", "maybe"}, `invalid --policy "maybe"`},
		{[]string{"update", "restart-policy", "--policy", "always"}, "exactly one instance"},
		{[]string{"update", "health-check", "web"}, "give a check (--http, --tcp or --cmd) or --none"},
		{[]string{"update", "health-check", "web", "--interval", "5s"}, "--interval needs a health check (--http, --tcp or --cmd)"},
		{[]string{"update", "health-check", "web", "--none", "--interval", "5s"}, "--interval cannot be combined with --none"},
		{[]string{"update", "health-check", "web", "--none", "--tcp", ":1"}, "--tcp and --none cannot be combined"},
		{[]string{"update", "health-check", "web", "--health-http", ":1"}, "unknown flag: --health-http"},
	} {
		res := f.run(tc.args...)
		if res.code != 1 || !strings.Contains(res.stderr, tc.want) {
			t.Errorf("%v: want %q\n%v", tc.args, tc.want, res)
		}
	}
	if n := len(f.requests("PATCH", "/")); n != sent {
		t.Errorf("%d requests sent for invalid command lines", n-sent)
	}
	// "update" alone lists its subcommands.
	res = f.run("update", "--help")
	if res.code != 0 || !strings.Contains(res.stdout, "restart-policy") || !strings.Contains(res.stdout, "health-check") {
		t.Fatal(res)
	}
}

func TestPsHealthColumn(t *testing.T) {
	f := newFake(t)
	list := "[" + instanceJSON("aaaaaaaaaaaaaaaa", "db", "Running", testNow.Add(-time.Minute),
		`"health_check":{"type":"tcp","port":5432,"interval":"10s","timeout":"2s","start_period":"30s","failure_threshold":3,"success_threshold":1},`+
			`"health_status":{"status":"unhealthy","consecutive_successes":0,"consecutive_failures":3}`) + "," +
		instanceJSON("bbbbbbbbbbbbbbbb", "web", "Running", testNow.Add(-time.Second), `"health_status":{"status":"disabled","consecutive_successes":0,"consecutive_failures":0}`) + "]"
	f.handle("GET /instances", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, list) })
	res := f.run("ps")
	lines := strings.Split(strings.TrimRight(res.stdout, "\n"), "\n")
	if res.code != 0 || len(lines) != 3 || !reflect.DeepEqual(strings.Fields(lines[0]), []string{"ID", "NAME", "IMAGE", "STATE", "HEALTH", "CREATED"}) {
		t.Fatal(res)
	}
	if fields := strings.Fields(lines[1]); fields[1] != "web" || fields[4] != "-" {
		t.Errorf("instance without a check: %q", fields)
	}
	if fields := strings.Fields(lines[2]); fields[1] != "db" || fields[4] != "unhealthy" {
		t.Errorf("instance with a check: %q", fields)
	}
}

func TestSplitCommand(t *testing.T) {
	for in, want := range map[string][]string{
		"pg_isready":                                 {"pg_isready"},
		"  curl  -f\thttp://x/  ":                    {"curl", "-f", "http://x/"},
		`sh -c 'echo "a b" && exit 1'`:               {"sh", "-c", `echo "a b" && exit 1`},
		`printf "%s\n" "a \"q\" \\ \$ \` + "`" + `"`: {"printf", `%s\n`, "a \"q\" \\ $ `"},
		`a\ b c\'d ""`:                               {"a b", "c'd", ""},
		`x=''`:                                       {"x="},
	} {
		got, err := splitCommand(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("splitCommand(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", " ", `""`, "a | b", "a;b", "a > f", "a & b", "$(x)", "`x`", `"unterminated`, `'x`, `"$x"`} {
		if got, err := splitCommand(in); err == nil {
			t.Errorf("splitCommand(%q) = %q, want an error", in, got)
		}
	}
}

func TestParseHTTPTarget(t *testing.T) {
	for in, want := range map[string]struct {
		port int
		path string
	}{
		":8080/healthz":             {8080, "/healthz"},
		"localhost:80":              {80, ""},
		"8080/x":                    {8080, "/x"},
		"HTTP://[::1]:9000/a/b?c=d": {9000, "/a/b?c=d"},
		"127.0.0.1:1/":              {1, "/"},
		" :65535/ready ":            {65535, "/ready"},
	} {
		port, path, err := parseHTTPTarget(in)
		if err != nil || port != want.port || path != want.path {
			t.Errorf("parseHTTPTarget(%q) = %d %q %v, want %d %q", in, port, path, err, want.port, want.path)
		}
	}
	for _, in := range []string{"", ":", "/healthz", "web:80/", ":65536/", ":-1/", "https://:443/", "10.0.0.1:80/"} {
		if port, path, err := parseHTTPTarget(in); err == nil {
			t.Errorf("parseHTTPTarget(%q) = %d %q, want an error", in, port, path)
		}
	}
}

// recordingInstances serves the contract test: the real API server checks
// the CLI's bodies against the spec and decodes them into the manager's
// types.
type recordingInstances struct {
	oneInstance
	mu      sync.Mutex
	created []instances.CreateParams
	updated []instances.UpdateParams
}

func (r *recordingInstances) Create(ctx context.Context, p instances.CreateParams) (*instances.Instance, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.created = append(r.created, p)
	// Echo the settings in force, as the manager does.
	in := &instances.Instance{ID: "i-" + p.Name, Name: p.Name, State: state.Initializing, RestartPolicy: p.RestartPolicy, HealthCheck: p.HealthCheck,
		SnapshotPolicy: p.SnapshotPolicy, HotplugSize: p.HotplugSize, DiskIOBps: p.DiskIOBps,
		BandwidthDownload: p.BandwidthDownload, BandwidthUpload: p.BandwidthUpload,
		Network: &instances.NetworkInfo{Enabled: p.NetworkEnabled == nil || *p.NetworkEnabled}}
	return in, nil
}

func (r *recordingInstances) Update(ctx context.Context, ref string, p instances.UpdateParams) (*instances.Instance, error) {
	if ref != "web" {
		return nil, fmt.Errorf("%w: %s", instances.ErrNotFound, ref)
	}
	if p.HealthCheck != nil {
		if err := p.HealthCheck.Validate(); err != nil {
			return nil, err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.updated = append(r.updated, p)
	return &instances.Instance{ID: "i-web", Name: "web", State: state.Running, RestartPolicy: p.RestartPolicy, HealthCheck: p.HealthCheck}, nil
}

func TestContractPolicies(t *testing.T) {
	rec := &recordingInstances{}
	target := startContractAPI(t, api.Options{Instances: rec, Images: noImages{}})

	res := contractRun(t, target, nil, "run", "-d", "--name", "web", "--no-network",
		"--restart", "on_failure", "--restart-max-attempts", "5", "--restart-backoff", "2s", "--restart-max-backoff", "2s",
		"--health-http", ":8080/healthz", "--health-retries", "2", "--health-interval", "3s", "--health-timeout", "3s", "busybox")
	if res.code != 0 || res.stdout != "i-web\n" {
		t.Fatal(res)
	}
	p := rec.created[0]
	wantPolicy := restart.Policy{Policy: restart.OnFailure, Backoff: 2 * time.Second, MaxBackoff: 2 * time.Second, MaxAttempts: 5, StableAfter: restart.DefaultStableAfter}
	wantCheck := health.DefaultCheck(health.HTTP)
	wantCheck.Port, wantCheck.Path, wantCheck.FailureThreshold, wantCheck.Interval, wantCheck.Timeout = 8080, "/healthz", 2, 3*time.Second, 3*time.Second
	if p.RestartPolicy == nil || *p.RestartPolicy != wantPolicy || p.HealthCheck == nil || !p.HealthCheck.Equal(wantCheck) ||
		p.NetworkEnabled == nil || *p.NetworkEnabled {
		t.Fatalf("create params: %+v %+v %v", p.RestartPolicy, p.HealthCheck, p.NetworkEnabled)
	}

	res = contractRun(t, target, nil, "update", "health-check", "web", "--cmd", "pg_isready -q")
	if res.code != 0 || res.stdout != "web\n" {
		t.Fatal(res)
	}
	if u := rec.updated[0]; u.RestartPolicy != nil || u.HealthCheck == nil || !reflect.DeepEqual(u.HealthCheck.Command, []string{"pg_isready", "-q"}) {
		t.Fatalf("update params: %+v", u)
	}
	res = contractRun(t, target, nil, "update", "health-check", "web", "--none")
	if u := rec.updated[1]; res.code != 0 || u.HealthCheck == nil || !u.HealthCheck.IsZero() {
		t.Fatalf("--none: %+v\n%v", u.HealthCheck, res)
	}
	res = contractRun(t, target, nil, "--format", "json", "update", "restart-policy", "web", "--policy", "always", "--stable-after", "1m")
	if u := rec.updated[2]; res.code != 0 || u.RestartPolicy == nil || u.RestartPolicy.Kind() != restart.Always || u.RestartPolicy.StableAfter != time.Minute ||
		!strings.Contains(res.stdout, `"restart_policy":{"backoff":"5s","max_attempts":0,"max_backoff":"5m","policy":"always","stable_after":"1m"}`) {
		t.Fatalf("restart-policy: %+v\n%v", u.RestartPolicy, res)
	}
	// The server's field errors reach the user.
	res = contractRun(t, target, nil, "update", "health-check", "web", "--tcp", ":22", "--interval", "1s", "--timeout", "2s")
	if res.code != 1 || !strings.Contains(res.stderr, "Error: invalid health_check.timeout: must not exceed interval (1s), got 2s") {
		t.Fatal(res)
	}
	res = contractRun(t, target, nil, "update", "restart-policy", "nope", "--policy", "never")
	if res.code != 1 || !strings.Contains(res.stderr, "Error: instance not found: nope") {
		t.Fatal(res)
	}
}
