package conformance_test

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"hypeman/internal/network/nettest"
	"hypeman/internal/testutil"
	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/testimage"
	"hypeman/internal/testutil/upstreamcli"
)

// TestUpstreamWakeOnRequest: hypeman's unmodified CLI publishes an
// instance (`ingress create`) and puts it on standby (`standby`); one
// request through the ingress then gets the page, the instance restored on
// the way (`inspect` says Running, the log shows no second boot). A
// Stopped target is not started: hypeman's CLI cannot set our rule's
// wake_stopped, so the default (502) is what its users get.
func TestUpstreamWakeOnRequest(t *testing.T) {
	ns := nettest.NewNS(t) // root, and never the host's network
	s := e2e.Start(t, "--network-mode", "bridge", "--network-netns", ns)
	f := &flow{t: t, s: s, up: upstreamcli.New(t, s.BaseURL, s.Token)}
	s.PushImage("conformance/web:v1", testimage.Busybox(t, webImage))
	port := testutil.FreePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	const host = "wake.conformance.test"

	f.step("run and publish", func(t *testing.T) {
		f.cli(t, nil, "run", "--name", "sleeper", "--memory", "256MB", "--cpus", "1", "--cmd", webScript, "conformance/web:v1")
		f.wait(t, "sleeper", "Running")
		f.cli(t, nil, "ingress", "create", "sleeper", "--hostname", host, "--port", "8080",
			"--host-port", strconv.Itoa(port), "--name", "sleeper-ing")
		if body := httpGet(t, url, host, 200); body != "hello conformance\n" {
			t.Fatalf("through the ingress: %q", body)
		}
	})
	f.step("standby, then one request wakes it", func(t *testing.T) {
		f.cli(t, nil, "standby", "sleeper")
		if in := f.inspect(t, "sleeper"); in.State != "Standby" {
			t.Fatalf("after standby: %s", in.State)
		}
		st, body, took := getOnce(t, url, host)
		if st != 200 || body != "hello conformance\n" {
			t.Fatalf("request to the instance on standby: %d %q\ndaemon log tail:\n%s", st, body, tail(s.Logs(), 30))
		}
		t.Logf("request that woke the instance: %v", took.Round(time.Millisecond))
		if in := f.inspect(t, "sleeper"); in.State != "Running" || in.HasSnapshot {
			t.Fatalf("after the request: %s has_snapshot %v", in.State, in.HasSnapshot)
		}
		if n := f.boots(t, "sleeper"); n != 1 {
			t.Fatalf("%d boots: the request must restore the instance, not boot it again", n)
		}
	})
	f.step("a Stopped target is not started by default", func(t *testing.T) {
		f.cli(t, nil, "stop", "sleeper")
		st, body, _ := getOnce(t, url, host)
		if st != http.StatusBadGateway || !strings.Contains(body, "wake_stopped") {
			t.Fatalf("request to the stopped instance: %d %q", st, body)
		}
		if in := f.inspect(t, "sleeper"); in.State != "Stopped" {
			t.Fatalf("after the request: %s", in.State)
		}
	})
}

// getOnce sends one request (no retries: the first one must be served).
func getOnce(t *testing.T, url, host string) (int, string, time.Duration) {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s (Host %s): %v", url, host, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), time.Since(start)
}
