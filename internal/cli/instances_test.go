package cli

import (
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const instID = "0123456789abcdef0123456789abcdef"

func TestRunSendsFlagsAndWaitsForRunning(t *testing.T) {
	f := newFake(t)
	f.handle("POST /instances", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, instanceJSON(instID, "web", "Initializing", testNow, ""))
	})
	f.handle("GET /instances/{id}/wait", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, `{"state":"Running","state_error":null,"timed_out":false,"reached":"Running"}`)
	})
	res := runWith(t, t.Context(), func() options {
		o, _, _ := testOptions(f.srv.URL, map[string]string{"FROM_HOST": "yes"})
		return o
	}(), "run", "--name", "web", "-m", "512MB", "--cpus", "3", "--overlay-size", "2GB",
		"-e", "A=1", "-e", "B=x=y", "-e", "FROM_HOST", "--tag", "team=core",
		"--entrypoint", "/bin/sh", "--skip-guest-agent", "--timeout", "90s",
		"busybox:latest", "-c", "echo hi --name x")
	if res.code != 0 || res.stdout != instID+"\n" {
		t.Fatalf("want the ID:\n%v", res)
	}
	posts := f.requests("POST", "/instances")
	if len(posts) != 1 {
		t.Fatalf("%d creates", len(posts))
	}
	got := mustJSON(t, posts[0].Body)
	want := map[string]any{
		"name": "web", "image": "busybox:latest", "size": "512MB", "vcpus": float64(3), "overlay_size": "2GB",
		"env":              map[string]any{"A": "1", "B": "x=y", "FROM_HOST": "yes"},
		"tags":             map[string]any{"team": "core"},
		"entrypoint":       []any{"/bin/sh"},
		"cmd":              []any{"-c", "echo hi --name x"},
		"skip_guest_agent": true,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("create body\n got %v\nwant %v", got, want)
	}
	waits := f.requests("GET", "/instances/")
	if len(waits) != 1 || waits[0].Path != "/instances/"+instID+"/wait" {
		t.Fatalf("wait requests %+v", waits)
	}
	if q := waits[0].Query; !reflect.DeepEqual(q["state"], []string{"Running"}) || q.Get("timeout") != "1m30s" {
		t.Fatalf("wait query %v", q)
	}
	if ua := posts[0].Header.Get("User-Agent"); !strings.HasPrefix(ua, "hypeman-cli/") {
		t.Errorf("User-Agent %q", ua)
	}
}

func TestRunDefaultsGeneratedNameAndDetach(t *testing.T) {
	f := newFake(t)
	var creates atomic.Int32
	f.handle("POST /instances", func(w http.ResponseWriter, r *http.Request) {
		if creates.Add(1) == 1 { // the first generated name is taken
			writeJSON(w, http.StatusConflict, `{"code":"conflict","message":"name in use"}`)
			return
		}
		writeJSON(w, http.StatusCreated, instanceJSON(instID, "x", "Initializing", testNow, ""))
	})
	res := f.run("run", "-d", "busybox")
	if res.code != 0 || res.stdout != instID+"\n" {
		t.Fatal(res)
	}
	posts := f.requests("POST", "/instances")
	if len(posts) != 2 {
		t.Fatalf("%d creates, want a retry with a new name", len(posts))
	}
	n1, n2 := mustJSON(t, posts[0].Body)["name"].(string), mustJSON(t, posts[1].Body)["name"].(string)
	if n1 == n2 || checkName(n1) != nil || checkName(n2) != nil {
		t.Fatalf("generated names %q, %q", n1, n2)
	}
	body := mustJSON(t, posts[1].Body)
	for _, k := range []string{"size", "vcpus", "env", "cmd", "entrypoint", "tags", "skip_guest_agent"} {
		if _, ok := body[k]; ok {
			t.Errorf("unset flag %s was sent: %v", k, body)
		}
	}
	if len(f.requests("GET", "/instances/")) != 0 {
		t.Error("--detach must not wait")
	}
	// A name the user chose is not retried.
	res = f.run("run", "-d", "--name", "taken", "busybox")
	if res.code != 0 {
		t.Fatal(res) // the fake only refuses the first create
	}
}

func TestRunStoppedInsteadOfRunning(t *testing.T) {
	f := newFake(t)
	f.handle("POST /instances", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, instanceJSON(instID, "job", "Initializing", testNow, ""))
	})
	f.handle("GET /instances/{id}/wait", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, `{"state":"Stopped","state_error":null,"timed_out":false}`)
	})
	f.handle("GET /instances/{id}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, instanceJSON(instID, "job", "Stopped", testNow, `"exit_code":127,"exit_message":"command not found"`))
	})
	f.handle("GET /instances/{id}/logs", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("tail") != "20" {
			t.Errorf("log tail query %v", r.URL.Query())
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: sh: nope: not found\n\n")
	})
	res := f.run("run", "busybox", "nope")
	if res.code != 1 || res.stdout != "" {
		t.Fatal(res)
	}
	for _, want := range []string{"sh: nope: not found", "Error: instance job is Stopped instead of Running: exit code 127 (command not found)"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("stderr lacks %q:\n%v", want, res)
		}
	}
}

func TestRunUsageErrors(t *testing.T) {
	f := newFake(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run"}, `"hypeman run" needs an image`},
		{[]string{"run", "--name", "Bad_Name", "busybox"}, `instance name "Bad_Name" is invalid`},
		{[]string{"run", "-e", "=x", "busybox"}, `invalid --env "=x"`},
		{[]string{"run", "-e", "UNSET_VAR", "busybox"}, "UNSET_VAR is not set in your environment"},
		{[]string{"run", "--tag", "novalue", "busybox"}, `invalid --tag "novalue"`},
		{[]string{"run", "--cpus", "0", "busybox"}, "--cpus must be at least 1"},
		{[]string{"run", "--bogus", "busybox"}, "unknown flag: --bogus"},
		{[]string{"ps", "--format", "yaml"}, `invalid --format "yaml"`},
	} {
		res := f.run(tc.args...)
		if res.code != 1 || !strings.Contains(res.stderr, tc.want) || !strings.Contains(res.stderr, "--help' for usage") {
			t.Errorf("%v:\n%v", tc.args, res)
		}
	}
	if n := len(f.requests("POST", "/")); n != 0 {
		t.Errorf("%d requests sent for invalid command lines", n)
	}
}

func TestPsFiltersAndSorts(t *testing.T) {
	f := newFake(t)
	list := "[" + instanceJSON("aaaaaaaaaaaaaaaa", "old", "Stopped", testNow.Add(-3*time.Hour), "") + "," +
		instanceJSON("bbbbbbbbbbbbbbbb", "mid", "Running", testNow.Add(-2*time.Minute), "") + "," +
		instanceJSON("cccccccccccccccc", "new", "Initializing", testNow.Add(-5*time.Second), "") + "]"
	f.handle("GET /instances", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, list) })

	res := f.run("ps")
	if res.code != 0 {
		t.Fatal(res)
	}
	lines := strings.Split(strings.TrimRight(res.stdout, "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") {
		t.Fatalf("ps:\n%s", res.stdout)
	}
	if fields := strings.Fields(lines[1]); !reflect.DeepEqual(fields, []string{"cccccccccccc", "new", "docker.io/library/busybox:latest", "Initializing", "5", "seconds", "ago"}) {
		t.Errorf("newest row %q", fields)
	}
	if !strings.Contains(lines[2], "mid") || strings.Contains(res.stdout, "old") {
		t.Errorf("ps should list mid then new and hide Stopped:\n%s", res.stdout)
	}

	res = f.run("ps", "-a")
	if !strings.Contains(res.stdout, "aaaaaaaaaaaa   old") || !strings.Contains(res.stdout, "3 hours ago") {
		t.Errorf("ps -a:\n%s", res.stdout)
	}
	res = f.run("ps", "-aq")
	if res.stdout != "cccccccccccccccc\nbbbbbbbbbbbbbbbb\naaaaaaaaaaaaaaaa\n" {
		t.Errorf("ps -aq: %q", res.stdout)
	}
	res = f.run("ps", "--format", "json")
	if res.code != 0 || strings.Contains(res.stdout, `"old"`) || !strings.HasPrefix(res.stdout, `[{"id":"bbbbbbbbbbbbbbbb"`) {
		t.Errorf("ps json (server order, Stopped filtered):\n%s", res.stdout)
	}
}

func TestInspectPrettyAndNotFound(t *testing.T) {
	f := newFake(t)
	f.handle("GET /instances/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "web" {
			writeJSON(w, http.StatusNotFound, `{"code":"not_found","message":"instance not found: `+r.PathValue("id")+`"}`)
			return
		}
		writeJSON(w, http.StatusOK, instanceJSON(instID, "web", "Running", testNow, ""))
	})
	res := f.run("inspect", "web")
	if res.code != 0 || !strings.HasPrefix(res.stdout, "{\n  \"created_at\"") || !strings.Contains(res.stdout, "\n  \"name\": \"web\",\n") {
		t.Fatal(res)
	}
	res = f.run("inspect", "nope")
	if res.code != 1 || res.stderr != "Error: instance not found: nope\n" {
		t.Fatal(res)
	}
}

func TestStopStartRm(t *testing.T) {
	f := newFake(t)
	states := map[string]string{"web": "Running", "old": "Stopped", "snap": "Standby"}
	f.handle("GET /instances/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		st, ok := states[id]
		if !ok {
			writeJSON(w, http.StatusNotFound, `{"code":"not_found","message":"instance not found: `+id+`"}`)
			return
		}
		writeJSON(w, http.StatusOK, instanceJSON(id+"-id", id, st, testNow, ""))
	})
	for _, verb := range []string{"stop", "start"} {
		f.handle("POST /instances/{id}/"+verb, func(w http.ResponseWriter, r *http.Request) {
			if r.PathValue("id") == "old" && verb == "stop" {
				writeJSON(w, http.StatusConflict, `{"code":"invalid_state","message":"cannot stop instance old: it is Stopped (allowed: start, delete)"}`)
				return
			}
			writeJSON(w, http.StatusOK, instanceJSON("x", r.PathValue("id"), "Running", testNow, ""))
		})
	}
	f.handle("DELETE /instances/{id}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })

	res := f.run("stop", "web", "old")
	if res.code != 1 || res.stdout != "web\n" || !strings.Contains(res.stderr, "Error: old: cannot stop instance old: it is Stopped") {
		t.Fatal(res)
	}
	res = f.run("start", "--format", "json", "old")
	if res.code != 0 || !strings.HasPrefix(res.stdout, `{"id":"x"`) {
		t.Fatal(res)
	}
	// rm refuses the running one, removes the rest.
	res = f.run("rm", "web", "old", "snap")
	if res.code != 1 || res.stdout != "old\nsnap\n" ||
		!strings.Contains(res.stderr, "cannot remove instance web: it is Running; stop it first or use rm -f") {
		t.Fatal(res)
	}
	for _, d := range f.requests("DELETE", "/instances/") {
		if d.Path == "/instances/web" {
			t.Fatal("rm without -f deleted a running instance")
		}
	}
	res = f.run("rm", "-f", "web")
	if res.code != 0 || res.stdout != "web\n" {
		t.Fatal(res)
	}
	dels := f.requests("DELETE", "/instances/")
	if len(dels) != 3 || dels[2].Path != "/instances/web" {
		t.Fatalf("deletes: %+v", dels)
	}
}

func TestWaitExitCodes(t *testing.T) {
	f := newFake(t)
	var body atomic.Value
	f.handle("GET /instances/{id}/wait", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, body.Load().(string))
	})
	for _, tc := range []struct {
		body   string
		code   int
		stdout string
		stderr string
	}{
		{`{"state":"Running","state_error":null,"timed_out":false,"reached":"Running"}`, 0, "Running\n", ""},
		{`{"state":"Stopped","state_error":null,"timed_out":false,"reached":"Stopped"}`, 0, "Stopped\n", ""},
		{`{"state":"Unknown","state_error":"QMP unreachable","timed_out":false}`, 1, "Unknown\n", "Instance is Unknown, not Running or Stopped: QMP unreachable.\n"},
		{`{"state":"Initializing","state_error":null,"timed_out":true}`, 2, "Initializing\n", "Timed out after 2m0s waiting for Running or Stopped (state: Initializing).\n"},
	} {
		body.Store(tc.body)
		res := f.run("wait", "web", "--state", "running", "--state", "Stopped", "--timeout", "2m")
		if res.code != tc.code || res.stdout != tc.stdout || res.stderr != tc.stderr {
			t.Errorf("server said %s:\n%v", tc.body, res)
		}
	}
	reqs := f.requests("GET", "/instances/web/wait")
	if q := reqs[0].Query; !reflect.DeepEqual(q["state"], []string{"Running", "Stopped"}) || q.Get("timeout") != "2m0s" {
		t.Errorf("wait query %v (states canonicalized, repeated)", q)
	}
	body.Store(`{"state":"Running","state_error":null,"timed_out":false,"reached":"Running"}`)
	res := f.run("wait", "--format", "json", "web", "--state", "Running")
	if res.code != 0 || res.stdout != body.Load().(string)+"\n" {
		t.Error(res)
	}
	res = f.run("wait", "web")
	if res.code != 1 || !strings.Contains(res.stderr, "--state is required") {
		t.Error(res)
	}
}

func TestWaitSplitsLongTimeouts(t *testing.T) {
	f := newFake(t)
	f.handle("GET /instances/{id}/wait", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.URL.Query().Get("timeout"))
		if err != nil || d <= 0 || d > 40*time.Millisecond {
			writeJSON(w, http.StatusBadRequest, `{"code":"invalid_timeout","message":"bad timeout"}`)
			return
		}
		time.Sleep(d)
		writeJSON(w, http.StatusOK, `{"state":"Initializing","state_error":null,"timed_out":true}`)
	})
	o, _, _ := testOptions(f.srv.URL, nil)
	o.maxServerWait = 40 * time.Millisecond
	start := time.Now()
	res := runWith(t, t.Context(), o, "wait", "web", "--state", "Running", "--timeout", "150ms")
	if res.code != exitTimeout {
		t.Fatal(res)
	}
	if n := len(f.requests("GET", "/instances/web/wait")); n < 4 {
		t.Errorf("%d wait requests for 150ms in 40ms chunks", n)
	}
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Errorf("gave up after %v", el)
	}
}

// run --workdir (or -w) sets the instance's working_dir; without it none
// is sent (the image's WORKDIR).
func TestRunWorkdir(t *testing.T) {
	f := newFake(t)
	f.handle("POST /instances", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, instanceJSON(instID, "x", "Initializing", testNow, ""))
	})
	for i, args := range [][]string{
		{"--workdir", "/srv/app"}, {"-w", "/srv/app"}, nil,
	} {
		if res := f.run(append(append([]string{"run", "-d"}, args...), "busybox", "-w", "x")...); res.code != 0 {
			t.Fatal(res)
		}
		body := mustJSON(t, f.requests("POST", "/instances")[i].Body)
		got, sent := body["working_dir"]
		if want := args != nil; sent != want || (want && got != "/srv/app") {
			t.Errorf("%v: working_dir %v (sent %v)", args, got, sent)
		}
		// Flags after IMAGE still belong to the program.
		if cmd := jsonOf(t, body["cmd"]); cmd != `["-w","x"]` {
			t.Errorf("%v: cmd %s", args, cmd)
		}
	}
}
