package cli

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
)

func TestSnapshotScheduleCommands(t *testing.T) {
	f := newFake(t)
	const sched = `{"instance_id":"web1","interval":"1h","retention":{"max_count":3},"next_run_at":"2026-03-01T13:00:00Z","created_at":"2026-03-01T12:00:00Z","updated_at":"2026-03-01T12:00:00Z"}`
	f.handle("PUT /instances/{id}/snapshot-schedule", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, sched)
	})
	f.handle("GET /instances/{id}/snapshot-schedule", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "none" {
			writeJSON(w, http.StatusNotFound, `{"code":"not_found","message":"snapshot schedule not found for instance none"}`)
			return
		}
		writeJSON(w, http.StatusOK, sched)
	})
	f.handle("DELETE /instances/{id}/snapshot-schedule", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})

	res := f.run("snapshot", "schedule", "set", "--interval", "1h", "--max-count", "3", "--max-age", "48h",
		"--name-prefix", "hourly", "--metadata", "team=web", "web")
	if res.code != 0 || !strings.Contains(res.stdout, `"next_run_at"`) {
		t.Fatal(res)
	}
	want := map[string]any{"interval": "1h", "name_prefix": "hourly", "metadata": map[string]any{"team": "web"},
		"retention": map[string]any{"max_count": float64(3), "max_age": "48h"}}
	if got := mustJSON(t, f.requests("PUT", "/instances/web/snapshot-schedule")[0].Body); !reflect.DeepEqual(got, want) {
		t.Fatalf("set body %v", got)
	}
	// --max-count 0 is sent (it disables count-based cleanup).
	if res := f.run("snapshot", "schedule", "set", "--interval", "1h", "--max-count", "0", "--max-age", "1h", "db"); res.code != 0 ||
		!strings.Contains(f.requests("PUT", "/instances/db/snapshot-schedule")[0].Body, `"max_count":0`) {
		t.Fatalf("max-count 0: %v", res)
	}
	if res := f.run("snapshot", "schedule", "set", "web"); res.code == 0 || !strings.Contains(res.stderr, "interval") {
		t.Fatalf("set without --interval: %v", res)
	}
	if res := f.run("snapshot", "schedule", "get", "web"); res.code != 0 || !strings.Contains(res.stdout, `"interval": "1h"`) {
		t.Fatalf("get: %v", res)
	}
	if res := f.run("snapshot", "schedule", "get", "none"); res.code == 0 || !strings.Contains(res.stderr, "not found") {
		t.Fatalf("get missing: %v", res)
	}
	if res := f.run("snapshot", "schedule", "delete", "web"); res.code != 0 || len(f.requests("DELETE", "/instances/web/snapshot-schedule")) != 1 {
		t.Fatalf("delete: %v", res)
	}
}

func TestRunTTL(t *testing.T) {
	f := newFake(t)
	f.handle("POST /instances", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, instanceJSON(instID, "x", "Initializing", testNow, ""))
	})
	if res := f.run("run", "-d", "--name", "tmp", "--ttl", "5m", "busybox"); res.code != 0 {
		t.Fatal(res)
	}
	if got := mustJSON(t, f.requests("POST", "/instances")[0].Body)["ttl"]; got != "5m" {
		t.Fatalf("ttl sent %v", got)
	}
}

// run --stop-timeout sets the instance's stop_timeout; stop --timeout
// shortens one stop (no flag: an empty body, the instance's own).
func TestRunStopTimeoutAndStopTimeout(t *testing.T) {
	f := newFake(t)
	f.handle("POST /instances", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, instanceJSON(instID, "x", "Initializing", testNow, ""))
	})
	f.handle("POST /instances/{id}/stop", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, instanceJSON(instID, "x", "Stopped", testNow, ""))
	})
	if res := f.run("run", "-d", "--name", "tmp", "--stop-timeout", "30s", "busybox"); res.code != 0 {
		t.Fatal(res)
	}
	if got := mustJSON(t, f.requests("POST", "/instances")[0].Body)["stop_timeout"]; got != "30s" {
		t.Fatalf("stop_timeout sent %v", got)
	}
	if res := f.run("run", "-d", "--name", "tmp2", "busybox"); res.code != 0 {
		t.Fatal(res)
	}
	if _, sent := mustJSON(t, f.requests("POST", "/instances")[1].Body)["stop_timeout"]; sent {
		t.Fatal("stop_timeout sent without --stop-timeout")
	}
	if res := f.run("stop", "--timeout", "1s", "tmp"); res.code != 0 {
		t.Fatal(res)
	}
	if res := f.run("stop", "tmp"); res.code != 0 {
		t.Fatal(res)
	}
	stops := f.requests("POST", "/instances/tmp/stop")
	if len(stops) != 2 || mustJSON(t, stops[0].Body)["timeout"] != "1s" {
		t.Fatalf("stop --timeout sent %+v", stops)
	}
	if _, sent := mustJSON(t, stops[1].Body)["timeout"]; sent {
		t.Fatalf("stop without --timeout sent a timeout: %s", stops[1].Body)
	}
}
