package cli

import (
	"net/http"
	"testing"
)

// The list filters and the start body reach the server in hypeman's wire
// form: tags as deepObject (tags[k]=v), kind/name as plain parameters,
// start's overrides as JSON arrays.
func TestFiltersAndStartOverrides(t *testing.T) {
	f := newFake(t)
	f.handle("GET /instances", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, "["+instanceJSON(instID, "web", "Running", testNow, `"tags":{"team":"a"}`)+"]")
	})
	f.handle("GET /snapshots", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, "[]")
	})
	f.handle("POST /instances/{id}/start", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, instanceJSON(instID, r.PathValue("id"), "Initializing", testNow, ""))
	})

	if res := f.run("ps", "--tag", "team=a", "--tag", "env=prod"); res.code != 0 {
		t.Fatal(res)
	}
	q := f.requests("GET", "/instances")[0].Query
	if q.Get("tags[team]") != "a" || q.Get("tags[env]") != "prod" {
		t.Fatalf("ps query %v", q)
	}
	if res := f.run("snapshot", "ls", "--kind", "standby", "--name", "s1", "--tag", "k=v"); res.code != 0 {
		t.Fatal(res)
	}
	q = f.requests("GET", "/snapshots")[0].Query
	if q.Get("kind") != "Standby" || q.Get("name") != "s1" || q.Get("tags[k]") != "v" {
		t.Fatalf("snapshot ls query %v", q)
	}
	if res := f.run("snapshot", "ls", "--kind", "paused"); res.code != 1 {
		t.Fatalf("bad --kind accepted: %v", res)
	}
	if res := f.run("start", "--cmd", "sh", "--cmd", "-c", "--cmd", "echo hi", "web"); res.code != 0 {
		t.Fatal(res)
	}
	if got := jsonOf(t, mustJSON(t, f.requests("POST", "/instances/web/start")[0].Body)); got != `{"cmd":["sh","-c","echo hi"]}` {
		t.Fatalf("start body %s", got)
	}
	if res := f.run("start", "db"); res.code != 0 || f.requests("POST", "/instances/db/start")[0].Body != "{}" {
		t.Fatalf("plain start: %v %q", res, f.requests("POST", "/instances/db/start")[0].Body)
	}
}
