package main_test

// Traffic: loopback only (the ingress listens on 127.0.0.1); the guests
// live on a bridge inside a network namespace this test creates.

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"hypeman/internal/network/nettest"
	"hypeman/internal/testutil"
	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/testimage"
)

// webImage serves "hello from <hostname>" with busybox httpd on port 8080.
func webImage() testimage.Options {
	return testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"},
	}
}

func waitRunningHTTP(t *testing.T, s *e2e.Server, ref string) {
	t.Helper()
	if st, body := s.Do("GET", "/instances/"+ref+"/wait?state=Running&timeout=120s", nil); st != 200 || !strings.Contains(string(body), `"Running"`) {
		t.Fatalf("wait for %s Running: %d %s", ref, st, body)
	}
}

// ingressGet requests http://127.0.0.1:port/ with Host host through the
// daemon's ingress, timing it.
func ingressGet(port int, host string) (int, string, time.Duration, error) {
	req, err := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/", port), nil)
	if err != nil {
		return 0, "", 0, err
	}
	req.Host = host
	c := &http.Client{Timeout: 3 * time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", time.Since(start), err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), time.Since(start), nil
}

// Issue 14 item 2 on real VMs, through the HTTP API and the ingress: an
// httpd instance put on Standby is restored by requests through the
// ingress (two concurrent requests, one restore), the wake recorded in the
// metrics; once Stopped, it is started only through a rule with
// wake_stopped.
func TestWakeOnRequestThroughIngress(t *testing.T) {
	t.Parallel()
	nettest.RequireRoot(t)
	ns := nettest.NewNS(t)
	s := e2e.Start(t, "--network-mode", "bridge", "--network-netns", ns, "--ingress-listen", "127.0.0.1",
		"--metrics-listen", "127.0.0.1:0", "--ingress-wake-timeout", "2m")
	metricsURL := s.MetricsURL()
	pushImage(t, s, "apps/web:v1", webImage())
	if st, body := s.Do("POST", "/instances", map[string]any{"name": "web", "image": "apps/web:v1", "size": "256MB", "vcpus": 1}); st != http.StatusCreated {
		t.Fatalf("create: %d %s", st, body)
	}
	waitRunningHTTP(t, s, "web")
	port := testutil.FreePort(t)
	rule := func(host string, wakeStopped bool) map[string]any {
		r := map[string]any{"match": map[string]any{"hostname": host, "port": port}, "target": map[string]any{"instance": "web", "port": 8080}}
		if wakeStopped {
			r["wake_stopped"] = true
		}
		return r
	}
	var ing struct {
		Rules []struct {
			WakeStopped *bool `json:"wake_stopped"`
		} `json:"rules"`
	}
	if st, body := s.JSON("POST", "/ingresses", map[string]any{"name": "web", "rules": []any{rule("web.test", false), rule("wake.test", true)}}, &ing); st != http.StatusCreated {
		t.Fatalf("create ingress: %d %s", st, body)
	} else if len(ing.Rules) != 2 || ing.Rules[0].WakeStopped != nil || ing.Rules[1].WakeStopped == nil || !*ing.Rules[1].WakeStopped {
		t.Fatalf("ingress rules: %s", body)
	}
	// Awake: the page comes straight through (httpd may need a moment).
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		st, body, _, err := ingressGet(port, "web.test")
		if err == nil && st == 200 && strings.Contains(body, "hello from web") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("page through the ingress while Running: %d %q %v", st, body, err)
		}
	}

	// Standby through the API, then two concurrent requests: both get
	// the page, and the instance was restored once.
	if st, body := s.Do("POST", "/instances/web/standby", nil); st != http.StatusOK {
		t.Fatalf("standby: %d %s", st, body)
	}
	before := scrape(t, metricsURL)
	restoresBefore := sample(before, "hypeman_instance_operation_duration_seconds", map[string]string{"operation": "restore"})
	var wg sync.WaitGroup
	took := make([]time.Duration, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, body, d, err := ingressGet(port, "web.test")
			took[i] = d
			if err != nil || st != 200 || !strings.Contains(body, "hello from web") {
				t.Errorf("request %d to the instance on standby: %d %q %v", i, st, body, err)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.Fatalf("daemon log:\n%s", s.Logs())
	}
	var in instance
	if st, body := s.JSON("GET", "/instances/web", nil, &in); st != 200 || in.State != "Running" {
		t.Fatalf("after the wake: %d %s", st, body)
	}
	after := scrape(t, metricsURL)
	if got := sample(after, "hypeman_instance_operation_duration_seconds", map[string]string{"operation": "restore"}) - restoresBefore; got != 1 {
		t.Fatalf("%v restores for two concurrent requests, want 1", got)
	}
	if got := sample(after, "hypeman_ingress_wakes_total", map[string]string{"from": "Standby", "result": "ok"}); got != 1 {
		t.Fatalf("hypeman_ingress_wakes_total{from=Standby,result=ok} = %v, want 1", got)
	}
	if got := sample(after, "hypeman_ingress_wake_duration_seconds", map[string]string{"from": "Standby"}); got != 1 {
		t.Fatalf("wake latency observations %v, want 1", got)
	}
	wakeSum := after["hypeman_ingress_wake_duration_seconds"].GetMetric()[0].GetHistogram().GetSampleSum()
	t.Logf("wake from Standby: %.3fs recorded; client saw %v and %v", wakeSum, took[0].Round(time.Millisecond), took[1].Round(time.Millisecond))
	if !s.WaitLog("instance woken by a request", 10*time.Second) {
		t.Fatal("the wake's latency is not logged")
	}

	// Stopped: the rule without wake_stopped answers 502 naming it; the
	// rule with it starts the instance and serves the page.
	if st, body := s.Do("POST", "/instances/web/stop", nil); st != http.StatusOK {
		t.Fatalf("stop: %d %s", st, body)
	}
	if st, body, _, err := ingressGet(port, "web.test"); err != nil || st != http.StatusBadGateway || !strings.Contains(body, "wake_stopped") {
		t.Fatalf("stopped target through a rule without wake_stopped: %d %q %v", st, body, err)
	}
	st, body, d, err := ingressGet(port, "wake.test")
	if err != nil || st != 200 || !strings.Contains(body, "hello from web") {
		t.Fatalf("stopped target through a rule with wake_stopped: %d %q %v\n%s", st, body, err, s.Logs())
	}
	t.Logf("wake from Stopped (boot): client saw %v", d.Round(time.Millisecond))
	if got := sample(scrape(t, metricsURL), "hypeman_ingress_wakes_total", map[string]string{"from": "Stopped", "result": "ok"}); got != 1 {
		t.Fatalf("hypeman_ingress_wakes_total{from=Stopped,result=ok} = %v, want 1", got)
	}

	// Scale to zero and back with nobody calling standby or restore: idle
	// for 3 s, the instance goes to Standby by itself; the next request
	// through the ingress wakes it and gets the page.
	if st, body := s.Do("PATCH", "/instances/web", map[string]any{"auto_standby": map[string]any{"enabled": true, "idle_timeout": "3s"}}); st != http.StatusOK {
		t.Fatalf("PATCH auto_standby: %d %s", st, body)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(250 * time.Millisecond) {
		if st, _ := s.JSON("GET", "/instances/web", nil, &in); st == 200 && in.State == "Standby" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("idle instance with idle_timeout 3s still %s after 2 min\n%s", in.State, s.Logs())
		}
	}
	st, body, d, err = ingressGet(port, "web.test")
	if err != nil || st != 200 || !strings.Contains(body, "hello from web") {
		t.Fatalf("request to the auto-standby instance: %d %q %v\n%s", st, body, err, s.Logs())
	}
	t.Logf("woken after auto-standby: client saw %v", d.Round(time.Millisecond))
	if got := sample(scrape(t, metricsURL), "hypeman_ingress_wakes_total", map[string]string{"from": "Standby", "result": "ok"}); got != 2 {
		t.Fatalf("hypeman_ingress_wakes_total{from=Standby,result=ok} = %v after the auto-standby, want 2", got)
	}
}
