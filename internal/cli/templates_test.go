package cli

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestTemplateCommands(t *testing.T) {
	f := newFake(t)
	tpl := instanceJSON("tttttttttttttttt", "base", "Template", testNow.Add(-time.Hour), `"fork_count":3`)
	f.handle("POST /instances/{id}/promote-template", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, tpl)
	})
	f.handle("POST /instances/{id}/demote-template", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusConflict, `{"code":"invalid_state","message":"cannot demote-template template base: 1 fork(s) of it exist: w1 (id1); delete them first, then demote it"}`)
	})
	f.handle("GET /instances", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("state") == "Template" {
			writeJSON(w, http.StatusOK, "["+tpl+"]")
			return
		}
		writeJSON(w, http.StatusOK, "["+tpl+","+instanceJSON("rrrrrrrrrrrrrrrr", "w1", "Running", testNow, `"fork_count":0`)+"]")
	})

	if res := f.run("template", "promote", "base"); res.code != 0 || res.stdout != "base\n" {
		t.Fatalf("template promote: %v", res)
	}
	if reqs := f.requests("POST", "/instances/base/promote-template"); len(reqs) != 1 {
		t.Fatalf("promote requests: %+v", reqs)
	}
	res := f.run("template", "demote", "base")
	if res.code != 1 || !strings.Contains(res.stderr, "w1 (id1)") || !strings.Contains(res.stderr, "delete them first") {
		t.Fatalf("template demote with forks: %v", res)
	}
	res = f.run("template", "ls")
	lines := strings.Split(strings.TrimRight(res.stdout, "\n"), "\n")
	if res.code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(lines[0], "FORKS") {
		t.Fatalf("template ls: %v", res)
	}
	if fields := strings.Fields(lines[1]); len(fields) < 4 || fields[1] != "base" || fields[3] != "3" {
		t.Fatalf("template ls row %q", lines[1])
	}
	if res := f.run("ps"); res.code != 0 || !strings.Contains(res.stdout, "Template (3 forks)") || !strings.Contains(res.stdout, "Running") {
		t.Fatalf("ps with a template: %v", res)
	}
}
