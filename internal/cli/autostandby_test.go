package cli

import (
	"net/http"
	"strings"
	"testing"
)

func TestAutoStandbyCommands(t *testing.T) {
	f := newFake(t)
	f.handle("PATCH /instances/{id}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, instanceJSON(instID, "web", "Running", testNow, ""))
	})
	const status = `{"supported":true,"configured":true,"enabled":true,"eligible":true,"status":"idle_countdown","reason":"idle_timeout_not_elapsed",
		"active_inbound_connections":0,"idle_timeout":"5m0s","idle_since":"2026-01-01T00:00:00Z","next_standby_at":"2026-01-01T00:05:00Z",
		"countdown_remaining":"4m0s","tracking_mode":"conntrack_netlink_v4_tcp"}`
	f.handle("GET /instances/{id}/auto-standby/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, status)
	})
	f.handle("POST /instances/{id}/auto-standby/hold", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "idle" {
			writeJSON(w, http.StatusConflict, `{"code":"instance_in_standby","message":"instance idle is on standby: restore it before connecting"}`)
			return
		}
		writeJSON(w, http.StatusOK, status)
	})
	for i, c := range []struct {
		args []string
		body string
	}{
		{[]string{"update", "auto-standby", "web", "--idle-timeout", "10m"}, `{"auto_standby":{"enabled":true,"idle_timeout":"10m"}}`},
		{[]string{"update", "auto-standby", "web", "--ignore-destination-port", "22", "--ignore-source-cidr", "10.0.0.0/8"},
			`{"auto_standby":{"enabled":true,"ignore_destination_ports":[22],"ignore_source_cidrs":["10.0.0.0/8"]}}`},
		{[]string{"update", "auto-standby", "web", "--enabled=false"}, `{"auto_standby":{"enabled":false}}`},
	} {
		res := f.run(c.args...)
		if res.code != 0 || res.stdout != "web\n" {
			t.Fatalf("%v:\n%v", c.args, res)
		}
		patches := f.requests("PATCH", "/instances/")
		if got := jsonOf(t, mustJSON(t, patches[i].Body)); got != c.body {
			t.Errorf("%v: PATCH %s, want %s", c.args, got, c.body)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"update", "auto-standby", "web"}, "give at least one auto-standby flag"},
		{[]string{"update", "auto-standby", "web", "--idle-timeout", "soon"}, `--idle-timeout "soon" is not a duration`},
		{[]string{"update", "auto-standby", "web", "--ignore-destination-port", "0"}, `--ignore-destination-port "0" is not a TCP port`},
		{[]string{"auto-standby", "hold", "web", "--duration", "1m", "--until", "2030-01-01T00:00:00Z"}, "not both"},
		{[]string{"auto-standby", "hold", "web", "--until", "tomorrow"}, "not an RFC 3339 time"},
	} {
		if res := f.run(tc.args...); res.code != 1 || !strings.Contains(res.stderr, tc.want) {
			t.Errorf("%v: want %q\n%v", tc.args, tc.want, res)
		}
	}
	res := f.run("auto-standby", "status", "web")
	for _, want := range []string{"idle_countdown", "conntrack_netlink_v4_tcp", "2026-01-01T00:05:00Z", "4m0s"} {
		if res.code != 0 || !strings.Contains(res.stdout, want) {
			t.Errorf("status output lacks %q:\n%v", want, res)
		}
	}
	if res := f.run("auto-standby", "hold", "web", "--duration", "30m"); res.code != 0 {
		t.Fatal(res)
	}
	holds := f.requests("POST", "/instances/web/auto-standby/hold")
	if len(holds) != 1 || jsonOf(t, mustJSON(t, holds[0].Body)) != `{"duration":"30m"}` {
		t.Fatalf("hold requests %+v", holds)
	}
	if res := f.run("auto-standby", "hold", "idle"); res.code != 1 || !strings.Contains(res.stderr, "on standby") {
		t.Fatal(res)
	}
}
