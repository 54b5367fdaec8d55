package ingress_test

// Loopback only: the "guest" is an httptest server on 127.0.0.1.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hypeman/internal/network/ingress"
	"hypeman/internal/testutil"
)

// fakeWaker wakes instances of a fakeResolver the way the daemon's waker
// does: Standby is restored, Stopped started only with opts.Stopped. A
// wake blocks until release is closed (or ctx ends); it checks the state
// before blocking and commits after, so wakes that overlap (no single
// flight) would each count a restore.
type fakeWaker struct {
	res     *fakeResolver
	addr    string
	release chan struct{}
	refuse  error

	mu       sync.Mutex
	state    map[string]string // instance → Standby | Stopped | Paused
	calls    []ingress.WakeOptions
	restores atomic.Int32
}

func (f *fakeWaker) Wake(ctx context.Context, instance string, opts ingress.WakeOptions) (ingress.WakeInfo, error) {
	f.mu.Lock()
	f.calls = append(f.calls, opts)
	st := f.state[instance]
	f.mu.Unlock()
	switch {
	case st == "":
		return ingress.WakeInfo{}, nil // awake already
	case st == "Stopped" && !opts.Stopped:
		return ingress.WakeInfo{}, fmt.Errorf("%w: instance is Stopped and its rule does not set wake_stopped", ingress.ErrNotAsleep)
	case st != "Standby" && st != "Stopped":
		return ingress.WakeInfo{}, fmt.Errorf("%w: instance is %s", ingress.ErrNotAsleep, st)
	}
	if f.refuse != nil {
		return ingress.WakeInfo{From: st}, fmt.Errorf("%w: %v", ingress.ErrWakeRefused, f.refuse)
	}
	select {
	case <-f.release:
	case <-ctx.Done():
		return ingress.WakeInfo{From: st}, ctx.Err()
	}
	f.restores.Add(1)
	f.mu.Lock()
	delete(f.state, instance)
	f.mu.Unlock()
	f.res.set(instance, 80, f.addr)
	return ingress.WakeInfo{From: st, Booted: st == "Stopped"}, nil
}

func (f *fakeWaker) wakeCalls() []ingress.WakeOptions {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ingress.WakeOptions(nil), f.calls...)
}

// countingResolver counts failed resolutions (requests that found the
// target asleep).
type countingResolver struct {
	*fakeResolver
	failed atomic.Int32
}

func (c *countingResolver) GuestAddr(ctx context.Context, instance string, port int) (string, error) {
	a, err := c.fakeResolver.GuestAddr(ctx, instance, port)
	if err != nil {
		c.failed.Add(1)
	}
	return a, err
}

type fakeWakeMetrics struct {
	mu  sync.Mutex
	obs []string
}

func (f *fakeWakeMetrics) WakeFinished(from, result string, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.obs = append(f.obs, from+"/"+result)
}

func (f *fakeWakeMetrics) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.obs...)
}

type wakeEnv struct {
	res     *countingResolver
	waker   *fakeWaker
	metrics *fakeWakeMetrics
	m       *ingress.Manager
	port    int
}

func newWakeEnv(t *testing.T, timeout time.Duration, rules ...ingress.Rule) *wakeEnv {
	t.Helper()
	res := &countingResolver{fakeResolver: &fakeResolver{}}
	e := &wakeEnv{res: res, metrics: &fakeWakeMetrics{}, port: testutil.FreePort(t)}
	e.waker = &fakeWaker{res: res.fakeResolver, addr: backend(t, "APP"), release: make(chan struct{}), state: map[string]string{}}
	m, err := ingress.New(context.Background(), ingress.Config{StateDir: t.TempDir(), Waker: e.waker, WakeTimeout: timeout, WakeMetrics: e.metrics}, res, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	for i := range rules {
		rules[i].Match.Port = e.port
	}
	if _, err := m.Create(context.Background(), ingress.CreateRequest{Name: "wake", Rules: rules}); err != nil {
		t.Fatal(err)
	}
	e.m = m
	return e
}

func hostRule(host, instance string, wakeStopped bool) ingress.Rule {
	return ingress.Rule{Match: ingress.Match{Hostname: host}, Target: ingress.Target{Instance: instance, Port: 80}, WakeStopped: wakeStopped}
}

// Many requests that find the instance in Standby share one wake: exactly
// one restore, and every request gets the page.
func TestWakeSingleFlight(t *testing.T) {
	e := newWakeEnv(t, 30*time.Second, hostRule("app.test", "app", false))
	e.waker.state["app"] = "Standby"
	const n = 20
	var wg sync.WaitGroup
	results := make(chan string, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, body := get(t, e.port, "app.test", "/")
			results <- fmt.Sprintf("%d %s", st, body)
		}()
	}
	// Release the restore once every request has found the instance
	// asleep (they are all held by then, or about to join).
	deadline := time.Now().Add(10 * time.Second)
	for e.res.failed.Load() < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := e.res.failed.Load(); got != n {
		t.Fatalf("%d of %d requests reached the resolver", got, n)
	}
	close(e.waker.release)
	wg.Wait()
	close(results)
	for r := range results {
		if !strings.HasPrefix(r, "200 APP") {
			t.Errorf("held request: %s", r)
		}
	}
	if got := e.waker.restores.Load(); got != 1 {
		t.Fatalf("%d restores for %d concurrent requests, want 1", got, n)
	}
	if got := e.metrics.list(); len(got) != 1 || got[0] != "Standby/ok" {
		t.Fatalf("wake metrics %v, want [Standby/ok]", got)
	}
	// Awake now: the next request is proxied without a wake.
	calls := len(e.waker.wakeCalls())
	if st, _ := get(t, e.port, "app.test", "/"); st != 200 || len(e.waker.wakeCalls()) != calls {
		t.Fatalf("request after the wake: %d, wake calls %d → %d", st, calls, len(e.waker.wakeCalls()))
	}
}

// A request held longer than WakeTimeout gets 504 naming the setting; the
// wake is not abandoned: once it finishes, requests are served and no
// second restore happens.
func TestWakeTimeout(t *testing.T) {
	e := newWakeEnv(t, 300*time.Millisecond, hostRule("app.test", "app", false))
	e.waker.state["app"] = "Standby"
	st, body := get(t, e.port, "app.test", "/")
	code, msg := errorBody(t, body)
	if st != http.StatusGatewayTimeout || code != "wake_timeout" || !strings.Contains(msg, ingress.WakeTimeoutSetting) || !strings.Contains(msg, `"app"`) {
		t.Fatalf("held past the timeout: %d %s", st, body)
	}
	close(e.waker.release)
	deadline := time.Now().Add(10 * time.Second)
	for e.waker.restores.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if st, body := get(t, e.port, "app.test", "/"); st != 200 || !strings.HasPrefix(body, "APP") {
		t.Fatalf("after the wake finished: %d %s", st, body)
	}
	if got := e.waker.restores.Load(); got != 1 {
		t.Fatalf("%d restores, want 1 (the timed-out request's wake went on)", got)
	}
}

// The flight itself is bounded (2×WakeTimeout) and reported as a timeout.
func TestWakeFlightBounded(t *testing.T) {
	e := newWakeEnv(t, 100*time.Millisecond, hostRule("app.test", "app", false))
	e.waker.state["app"] = "Standby"
	if st, _ := get(t, e.port, "app.test", "/"); st != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504", st)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(e.metrics.list()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := e.metrics.list(); len(got) != 1 || got[0] != "Standby/timeout" {
		t.Fatalf("wake metrics %v, want [Standby/timeout]", got)
	}
}

// A Stopped target is started only through a rule that sets wake_stopped;
// through another rule it answers 502 as before, naming why.
func TestWakeStoppedOnlyWhenRuleOptsIn(t *testing.T) {
	e := newWakeEnv(t, 30*time.Second, hostRule("plain.test", "app", false), hostRule("wake.test", "app", true),
		hostRule("paused.test", "frozen", true))
	e.waker.state["app"] = "Stopped"
	e.waker.state["frozen"] = "Paused"
	close(e.waker.release)

	st, body := get(t, e.port, "plain.test", "/")
	code, msg := errorBody(t, body)
	if st != http.StatusBadGateway || code != "bad_gateway" || !strings.Contains(msg, "wake_stopped") {
		t.Fatalf("stopped target without opt-in: %d %s", st, body)
	}
	if e.waker.restores.Load() != 0 {
		t.Fatal("a rule without wake_stopped started the instance")
	}
	if st, body := get(t, e.port, "wake.test", "/"); st != 200 || !strings.HasPrefix(body, "APP") {
		t.Fatalf("stopped target with wake_stopped: %d %s", st, body)
	}
	if got := e.waker.wakeCalls(); len(got) != 2 || got[0].Stopped || !got[1].Stopped {
		t.Fatalf("wake options passed: %+v", got)
	}
	if got := e.metrics.list(); len(got) != 1 || got[0] != "Stopped/ok" {
		t.Fatalf("wake metrics %v (a refused opt-in is no wake)", got)
	}
	// Not asleep (here: the waker says Paused) → 502 as before.
	if st, body := get(t, e.port, "paused.test", "/"); st != http.StatusBadGateway {
		t.Fatalf("not-asleep target: %d %s", st, body)
	}
}

// An admission refusal answers 503 wake_refused with the reason.
func TestWakeRefused(t *testing.T) {
	e := newWakeEnv(t, 30*time.Second, hostRule("app.test", "app", false))
	e.waker.state["app"] = "Standby"
	e.waker.refuse = errors.New("insufficient memory: asked 1.0 GiB, 0.2 GiB free")
	st, body := get(t, e.port, "app.test", "/")
	code, msg := errorBody(t, body)
	if st != http.StatusServiceUnavailable || code != "wake_refused" || !strings.Contains(msg, "insufficient memory") {
		t.Fatalf("refused wake: %d %s", st, body)
	}
	if got := e.metrics.list(); len(got) != 1 || got[0] != "Standby/refused" {
		t.Fatalf("wake metrics %v", got)
	}
}

// Without a Waker nothing changes: a target that does not resolve is 502.
func TestNoWakerIs502(t *testing.T) {
	res := &fakeResolver{}
	m := newManager(t, t.TempDir(), res, nil)
	p := testutil.FreePort(t)
	if _, err := m.Create(context.Background(), ingress.CreateRequest{Name: "x", Rules: []ingress.Rule{
		{Match: ingress.Match{Port: p}, Target: ingress.Target{Instance: "app", Port: 80}, WakeStopped: true}}}); err != nil {
		t.Fatal(err)
	}
	if st, body := get(t, p, "x", "/"); st != http.StatusBadGateway {
		t.Fatalf("%d %s", st, body)
	}
	list, _ := m.List(context.Background())
	if !list[0].Rules[0].WakeStopped {
		t.Fatal("wake_stopped not kept on the rule")
	}
}

// A target started afresh (Booted) may not listen yet: the held request
// waits until its port accepts a connection instead of answering 502.
func TestWakeBootedWaitsForListener(t *testing.T) {
	res := &countingResolver{fakeResolver: &fakeResolver{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close() // nothing listens until the test says so
	var dials atomic.Int32
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == target {
			dials.Add(1)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	waker := &fakeWaker{res: res.fakeResolver, addr: target, release: make(chan struct{}), state: map[string]string{"app": "Stopped"}}
	close(waker.release)
	m, err := ingress.New(context.Background(), ingress.Config{StateDir: t.TempDir(), Waker: waker, DialContext: dial}, res, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	p := testutil.FreePort(t)
	if _, err := m.Create(context.Background(), ingress.CreateRequest{Name: "x", Rules: []ingress.Rule{
		{Match: ingress.Match{Port: p}, Target: ingress.Target{Instance: "app", Port: 80}, WakeStopped: true}}}); err != nil {
		t.Fatal(err)
	}
	type result struct {
		st   int
		body string
	}
	done := make(chan result, 1)
	go func() {
		st, body := get(t, p, "x", "/")
		done <- result{st, body}
	}()
	// Start the server only once the proxy has found the port closed and
	// tried again.
	for deadline := time.Now().Add(10 * time.Second); dials.Load() < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			r := <-done
			t.Fatalf("%d dials to the booted target; request ended %d %s", dials.Load(), r.st, r.body)
		}
	}
	ln, err = net.Listen("tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "BOOTED") })}
	go srv.Serve(ln)
	defer srv.Close()
	if r := <-done; r.st != 200 || r.body != "BOOTED" {
		t.Fatalf("held request: %d %s", r.st, r.body)
	}
}
