package cli

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func sseHeaders(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
}

func TestLogsPrintsLinesAndPassesOptions(t *testing.T) {
	f := newFake(t)
	f.handle("GET /instances/{id}/logs", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "web" {
			writeJSON(w, http.StatusNotFound, `{"code":"not_found","message":"instance not found: x"}`)
			return
		}
		sseHeaders(w)
		// Lines are JSON strings; keepalives are bare comment lines.
		fmt.Fprint(w, "data: \"first line\"\n\n: keepalive\ndata: \"\"\n\ndata: \"tab\\there \\u00e9 <b>\"\n\n")
	})
	res := f.run("logs", "--tail", "5", "--source", "vmm", "web")
	if res.code != 0 || res.stdout != "first line\n\ntab\there é <b>\n" {
		t.Fatal(res)
	}
	q := f.requests("GET", "/instances/web/logs")[0].Query
	if q.Get("tail") != "5" || q.Get("source") != "vmm" || q.Get("follow") != "false" {
		t.Errorf("log query %v", q)
	}
	res = f.run("logs", "x")
	if res.code != 1 || res.stderr != "Error: instance not found: x\n" {
		t.Fatal(res)
	}
	res = f.run("logs", "--source", "kernel", "web")
	if res.code != 1 || !strings.Contains(res.stderr, `invalid --source "kernel"`) {
		t.Fatal(res)
	}
}

func TestLogsErrorEvent(t *testing.T) {
	f := newFake(t)
	f.handle("GET /instances/{id}/logs", func(w http.ResponseWriter, r *http.Request) {
		sseHeaders(w)
		fmt.Fprint(w, "data: \"partial\"\n\nevent: error\ndata: {\"code\":\"internal\",\"message\":\"log file vanished\"}\n\n")
	})
	res := f.run("logs", "web")
	if res.code != 1 || res.stdout != "partial\n" || !strings.Contains(res.stderr, "Error: log stream failed: log file vanished") {
		t.Fatal(res)
	}
	// A line that is not a JSON string is a broken stream, not output.
	f = newFake(t)
	f.handle("GET /instances/{id}/logs", func(w http.ResponseWriter, r *http.Request) {
		sseHeaders(w)
		fmt.Fprint(w, "data: raw line\n\n")
	})
	if res := f.run("logs", "web"); res.code != 1 || !strings.Contains(res.stderr, `sent "raw line", not a JSON string`) {
		t.Fatal(res)
	}
}

func TestLogsFollowEndsCleanlyOnInterrupt(t *testing.T) {
	f := newFake(t)
	f.handle("GET /instances/{id}/logs", func(w http.ResponseWriter, r *http.Request) {
		sseHeaders(w)
		fmt.Fprint(w, "data: \"line\"\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	o, _, _ := testOptions(f.srv.URL, nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	time.AfterFunc(100*time.Millisecond, cancel)
	res := runWith(t, ctx, o, "logs", "-f", "web")
	if res.code != 0 || res.stdout != "line\n" {
		t.Fatal(res)
	}
	if q := f.requests("GET", "/instances/web/logs")[0].Query; q.Get("follow") != "true" || q.Get("tail") != "100" {
		t.Errorf("follow query %v", q)
	}
}

func lifecycle(id int, typ, inst, from, to, reason string) string {
	return fmt.Sprintf("id: %d\nevent: %s\ndata: {\"id\":%d,\"type\":%q,\"instance_id\":%q,\"from\":%q,\"to\":%q,\"at\":\"2025-03-01T12:00:0%dZ\",\"reason\":%q}\n\n",
		id, typ, id, typ, inst, from, to, id, reason)
}

func TestEventsResumeAfterDrop(t *testing.T) {
	f := newFake(t)
	var conns atomic.Int32
	lastIDs := make(chan string, 4)
	f.handle("GET /instances/{id}/events", func(w http.ResponseWriter, r *http.Request) {
		lastIDs <- r.Header.Get("Last-Event-ID")
		sseHeaders(w)
		switch conns.Add(1) {
		case 1: // two events, then the connection drops
			fmt.Fprint(w, lifecycle(1, "state_change", instID, "", "Initializing", "created"))
			fmt.Fprint(w, lifecycle(2, "state_change", instID, "Initializing", "Running", "program started"))
		default: // resumed: the deletion ends the stream
			fmt.Fprint(w, "event: reset\ndata: {\"reason\":\"lagged\"}\n\n")
			fmt.Fprint(w, lifecycle(3, "deleted", instID, "Running", "", "deleted by API"))
		}
	})
	f.handle("GET /instances", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, "["+instanceJSON(instID, "web", "Running", testNow, "")+"]")
	})
	res := f.run("events", "web")
	if res.code != 0 {
		t.Fatal(res)
	}
	want := "2025-03-01T12:00:01.000Z  web (0123456789ab)  new → Initializing  created\n" +
		"2025-03-01T12:00:02.000Z  web (0123456789ab)  Initializing → Running  program started\n" +
		"2025-03-01T12:00:03.000Z  web (0123456789ab)  Running → deleted  deleted by API\n"
	if res.stdout != want {
		t.Fatalf("events:\n%s\nwant:\n%s\nstderr: %s", res.stdout, want, res.stderr)
	}
	if first, second := <-lastIDs, <-lastIDs; first != "" || second != "2" {
		t.Fatalf("Last-Event-ID %q then %q, want none then 2", first, second)
	}
	for _, w := range []string{"reconnecting", "Reconnected.", "Some events were missed (lagged)"} {
		if !strings.Contains(res.stderr, w) {
			t.Errorf("stderr lacks %q: %q", w, res.stderr)
		}
	}
}

func TestEventsJSONAndNameLookup(t *testing.T) {
	f := newFake(t)
	other := "ffffffffffffffffffff"
	f.handle("GET /events", func(w http.ResponseWriter, r *http.Request) {
		sseHeaders(w)
		fmt.Fprint(w, lifecycle(5, "state_change", other, "Running", "Stopped", "program exited"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	f.handle("GET /instances", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, "[]") })
	f.handle("GET /instances/{id}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, instanceJSON(other, "late", "Stopped", testNow, ""))
	})
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"events"}, "2025-03-01T12:00:05.000Z  late (ffffffffffff)  Running → Stopped  program exited\n"},
		{[]string{"events", "--format", "json"}, `{"id":5,"type":"state_change","instance_id":"ffffffffffffffffffff","from":"Running","to":"Stopped","at":"2025-03-01T12:00:05Z","reason":"program exited"}` + "\n"},
	} {
		o, _, _ := testOptions(f.srv.URL, nil)
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(150*time.Millisecond, cancel)
		res := runWith(t, ctx, o, tc.args...)
		cancel()
		if res.code != 0 || res.stdout != tc.want {
			t.Errorf("%v:\n%v", tc.args, res)
		}
	}
}

func TestEventsFirstConnectErrorsAreFatal(t *testing.T) {
	f := newFake(t)
	f.handle("GET /instances/{id}/events", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, `{"code":"not_found","message":"instance not found: gone"}`)
	})
	res := f.run("events", "gone")
	if res.code != 1 || res.stderr != "Error: instance not found: gone\n" {
		t.Fatal(res)
	}
	f.srv.Close()
	res = f.run("events")
	if res.code != 1 || !strings.Contains(res.stderr, "cannot reach hypemand at "+f.srv.URL) {
		t.Fatal(res)
	}
}
