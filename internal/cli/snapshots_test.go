package cli

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

func snapshotJSON(id, name, kind, source string, created time.Time) string {
	return `{"id":"` + id + `","name":"` + name + `","kind":"` + kind + `","source_instance_id":"i-` + source +
		`","source_instance_name":"` + source + `","image":"docker.io/library/busybox:latest","created_at":"` +
		created.Format(time.RFC3339) + `","size_bytes":73400320,"memory_bytes":1073741824,"compressed":false}`
}

func TestStandbyRestorePauseResume(t *testing.T) {
	f := newFake(t)
	for _, verb := range []string{"standby", "restore", "pause", "resume"} {
		f.handle("POST /instances/{id}/"+verb, func(w http.ResponseWriter, r *http.Request) {
			if r.PathValue("id") == "bad" {
				writeJSON(w, http.StatusConflict, `{"code":"invalid_state","message":"cannot `+verb+` instance in state Stopped"}`)
				return
			}
			writeJSON(w, http.StatusOK, instanceJSON(instID, r.PathValue("id"), "Running", testNow, ""))
		})
		res := f.run(verb, "web", "db")
		if res.code != 0 || res.stdout != "web\ndb\n" {
			t.Errorf("%s:\n%v", verb, res)
		}
		res = f.run(verb, "bad", "web")
		if res.code != 1 || res.stdout != "web\n" || !strings.Contains(res.stderr, "Error: bad: cannot "+verb+" instance in state Stopped") {
			t.Errorf("%s bad:\n%v", verb, res)
		}
		if n := len(f.requests("POST", "/instances/")); n == 0 {
			t.Fatal("no request")
		}
	}
}

func TestFork(t *testing.T) {
	f := newFake(t)
	f.handle("POST /instances/{id}/fork", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, instanceJSON("f0123456789", "web-2", "Standby", testNow, ""))
	})
	res := f.run("fork", "--from-running", "--target-state", "standby", "web", "web-2")
	if res.code != 0 || res.stdout != "f0123456789\n" {
		t.Fatal(res)
	}
	reqs := f.requests("POST", "/instances/web/fork")
	want := map[string]any{"name": "web-2", "from_running": true, "target_state": "Standby"}
	if got := mustJSON(t, reqs[0].Body); len(reqs) != 1 || !reflect.DeepEqual(got, want) {
		t.Fatalf("fork body %v", got)
	}
	res = f.run("fork", "web", "web-3")
	if got := mustJSON(t, f.requests("POST", "/instances/web/fork")[1].Body); res.code != 0 || !reflect.DeepEqual(got, map[string]any{"name": "web-3"}) {
		t.Fatalf("defaults: %v\n%v", got, res)
	}
	res = f.run("--format", "json", "fork", "web", "web-4")
	if res.code != 0 || mustJSON(t, res.stdout)["name"] != "web-2" {
		t.Fatal(res)
	}
	for _, args := range [][]string{{"fork", "web", "Bad_Name"}, {"fork", "--target-state", "Paused", "web", "x"}, {"fork", "web"}} {
		if res := f.run(args...); res.code != 1 || !strings.Contains(res.stderr, "--help") {
			t.Errorf("%v:\n%v", args, res)
		}
	}
	if n := len(f.requests("POST", "/instances/web/fork")); n != 3 {
		t.Fatalf("%d fork requests, want 3 (usage errors must not reach the server)", n)
	}
}

func TestSnapshotCommands(t *testing.T) {
	f := newFake(t)
	f.handle("POST /instances/{id}/snapshots", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, snapshotJSON("s0123456789abcdef", "before", "Standby", r.PathValue("id"), testNow))
	})
	f.handle("GET /snapshots", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, "["+snapshotJSON("s1aaaaaaaaaaaaaaa", "old", "Stopped", "db", testNow.Add(-3*time.Hour))+","+
			snapshotJSON("s2bbbbbbbbbbbbbbb", "new", "Standby", "web", testNow.Add(-2*time.Minute))+"]")
	})
	f.handle("GET /snapshots/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "before" {
			writeJSON(w, http.StatusNotFound, `{"code":"not_found","message":"snapshot not found: `+r.PathValue("id")+`"}`)
			return
		}
		writeJSON(w, http.StatusOK, snapshotJSON("s0123456789abcdef", "before", "Standby", "web", testNow))
	})
	f.handle("DELETE /snapshots/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "nope" {
			writeJSON(w, http.StatusNotFound, `{"code":"not_found","message":"snapshot not found: nope"}`)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	f.handle("POST /instances/{id}/snapshots/{sid}/restore", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, instanceJSON(instID, r.PathValue("id"), "Running", testNow, ""))
	})
	f.handle("POST /snapshots/{id}/fork", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, instanceJSON("n0123456789", "clone", "Running", testNow, ""))
	})

	res := f.run("snapshot", "create", "--kind", "standby", "--name", "before", "--tag", "why=upgrade", "web")
	if res.code != 0 || res.stdout != "s0123456789abcdef\n" {
		t.Fatal(res)
	}
	want := map[string]any{"kind": "Standby", "name": "before", "tags": map[string]any{"why": "upgrade"}}
	if got := mustJSON(t, f.requests("POST", "/instances/web/snapshots")[0].Body); !reflect.DeepEqual(got, want) {
		t.Fatalf("create body %v", got)
	}
	// Without --kind the kind follows the instance's state (hypeman requires one).
	f.handle("GET /instances/{id}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, instanceJSON(instID, r.PathValue("id"), "Stopped", testNow, ""))
	})
	if res := f.run("snapshot", "create", "db"); res.code != 0 || f.requests("POST", "/instances/db/snapshots")[0].Body != `{"kind":"Stopped"}` {
		t.Fatalf("create with defaults:\n%v %q", res, f.requests("POST", "/instances/db/snapshots")[0].Body)
	}

	res = f.run("snapshot", "ls", "--instance", "web")
	wantTable := "ID             NAME   KIND      SOURCE   SIZE      CREATED\n" +
		"s2bbbbbbbbbb   new    Standby   web      73.4 MB   2 minutes ago\n" +
		"s1aaaaaaaaaa   old    Stopped   db       73.4 MB   3 hours ago\n"
	if res.code != 0 || res.stdout != wantTable {
		t.Fatalf("list:\n%s\nwant:\n%s\n%v", res.stdout, wantTable, res)
	}
	if q := f.requests("GET", "/snapshots")[0].Query.Get("instance"); q != "web" {
		t.Fatalf("list query instance=%q", q)
	}
	res = f.run("--format", "json", "snapshot", "list")
	if res.code != 0 || !strings.HasPrefix(res.stdout, `[{"id":"s1aaaaaaaaaaaaaaa"`) {
		t.Fatal(res)
	}

	res = f.run("snapshot", "get", "before")
	if res.code != 0 || !strings.Contains(res.stdout, `  "kind": "Standby",`) {
		t.Fatal(res)
	}
	if res := f.run("snapshot", "get", "zzz"); res.code != 1 || !strings.Contains(res.stderr, "Error: snapshot not found: zzz") {
		t.Fatal(res)
	}
	if res := f.run("snapshot", "restore", "web", "before"); res.code != 0 || res.stdout != "web\n" ||
		len(f.requests("POST", "/instances/web/snapshots/before/restore")) != 1 {
		t.Fatal(res)
	}
	res = f.run("snapshot", "fork", "--target-state", "stopped", "before", "clone")
	if res.code != 0 || res.stdout != "n0123456789\n" {
		t.Fatal(res)
	}
	if got := mustJSON(t, f.requests("POST", "/snapshots/before/fork")[0].Body); !reflect.DeepEqual(got, map[string]any{"name": "clone", "target_state": "Stopped"}) {
		t.Fatalf("fork body %v", got)
	}
	res = f.run("snapshot", "rm", "before", "nope", "s1")
	if res.code != 1 || res.stdout != "before\ns1\n" || !strings.Contains(res.stderr, "Error: nope: snapshot not found") {
		t.Fatal(res)
	}
	for _, args := range [][]string{
		{"snapshot", "create", "--kind", "Paused", "web"}, {"snapshot", "create", "--name", "No_Good", "web"},
		{"snapshot", "create", "--tag", "novalue", "web"}, {"snapshot", "fork", "before"}, {"snapshot", "restore", "web"},
	} {
		if res := f.run(args...); res.code != 1 || !strings.Contains(res.stderr, "--help") {
			t.Errorf("%v:\n%v", args, res)
		}
	}
	if res := f.run("snapshot", "create", "--name", "No_Good", "web"); !strings.Contains(res.stderr, `snapshot name "No_Good" is invalid`) {
		t.Errorf("name message:\n%v", res)
	}
	if res := f.run("snapshot", "bogus"); res.code != 1 || !strings.Contains(res.stderr, `unknown command "bogus" for "hypeman snapshot"`) {
		t.Errorf("unknown subcommand:\n%v", res)
	}
	if res := f.run("snapshot"); res.code != 0 || !strings.Contains(res.stdout, "Available Commands:") {
		t.Errorf("bare group:\n%v", res)
	}
}

func TestParseRule(t *testing.T) {
	for in, want := range map[string]string{
		"8080=web:80":                  `{"match":{"port":8080},"target":{"instance":"web","port":80}}`,
		"app.example.com:443=web:8443": `{"match":{"hostname":"app.example.com","port":443},"target":{"instance":"web","port":8443}}`,
		"api.example.com=api:3000":     `{"match":{"hostname":"api.example.com"},"target":{"instance":"api","port":3000}}`,
		"*.example.com:80=web:80":      `{"match":{"hostname":"*.example.com","port":80},"target":{"instance":"web","port":80}}`,
	} {
		r, err := parseRule(in)
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if got := mustMarshal(t, r); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
		if back, _ := parseRule(ruleString(r)); mustMarshal(t, back) != want {
			t.Errorf("%s: ruleString %q does not round-trip", in, ruleString(r))
		}
	}
	for _, in := range []string{"", "8080", "8080=web", "8080=web:http", "8080=:80", "0=web:80", "70000=web:80", "=web:80", "host:x=web:80"} {
		if r, err := parseRule(in); err == nil {
			t.Errorf("%q accepted as %+v", in, r)
		}
	}
}

func TestIngressCommands(t *testing.T) {
	f := newFake(t)
	f.handle("POST /ingresses", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, `{"id":"g0123456789abcdef","name":"site","created_at":"2025-03-01T11:00:00Z","rules":[]}`)
	})
	f.handle("GET /ingresses", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, `[{"id":"g0123456789abcdef","name":"site","created_at":"2025-03-01T11:00:00Z","rules":[
			{"match":{"hostname":"a.example.com","port":80},"target":{"instance":"web","port":8080}},
			{"match":{"port":8081},"target":{"instance":"api","port":3000}}]}]`)
	})
	f.handle("DELETE /ingresses/{id}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	res := f.run("ingress", "create", "site", "--rule", "a.example.com:80=web:8080", "--rule", "8081=api:3000")
	if res.code != 0 || res.stdout != "g0123456789abcdef\n" {
		t.Fatal(res)
	}
	want := `{"name":"site","rules":[{"match":{"hostname":"a.example.com","port":80},"target":{"instance":"web","port":8080}},` +
		`{"match":{"port":8081},"target":{"instance":"api","port":3000}}]}`
	if got := f.requests("POST", "/ingresses")[0].Body; got != want {
		t.Fatalf("create body\n got %s\nwant %s", got, want)
	}
	res = f.run("ingress", "list")
	wantTable := "ID             NAME   RULES                                      CREATED\n" +
		"g0123456789a   site   a.example.com:80=web:8080, 8081=api:3000   1 hour ago\n"
	if res.code != 0 || res.stdout != wantTable {
		t.Fatalf("list:\n%q\nwant\n%q", res.stdout, wantTable)
	}
	if res := f.run("ingress", "delete", "site"); res.code != 0 || res.stdout != "site\n" || len(f.requests("DELETE", "/ingresses/site")) != 1 {
		t.Fatal(res)
	}
	n := len(f.requests("POST", "/ingresses"))
	for _, args := range [][]string{{"ingress", "create", "site"}, {"ingress", "create", "site", "--rule", "80"}, {"ingress", "create", "Bad", "--rule", "80=web:80"}} {
		if res := f.run(args...); res.code != 1 || !strings.Contains(res.stderr, "--help") {
			t.Errorf("%v:\n%v", args, res)
		}
	}
	if len(f.requests("POST", "/ingresses")) != n {
		t.Fatal("a usage error reached the server")
	}
}

func mustMarshal(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
