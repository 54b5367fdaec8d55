package api

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	ggcr "github.com/google/go-containerregistry/pkg/registry"

	"hypeman/internal/auth"
	"hypeman/internal/daemon"
	"hypeman/internal/events"
	"hypeman/internal/httpserver"
	"hypeman/internal/images"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/paths"
	"hypeman/internal/testutil/testimage"
	"hypeman/internal/testutil/tier"
)

// hardened serves h the way hypemand does (httpserver.Listen +
// httpserver.NewServer) on a loopback port and returns its address.
func hardened(t *testing.T, h http.Handler, lim httpserver.Limits) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httpserver.NewServer(h, lim, nil)
	go srv.Serve(httpserver.Listen(ln, lim, nil))
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// attack opens n connections from local (an address on lo) to addr in
// parallel and writes payload on each, leaving them open.
func attack(t *testing.T, addr, local string, n int, payload string) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	var failed atomic.Int64
	next := atomic.Int64{}
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				c, err := d.Dial("tcp", addr)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.WriteString(c, payload)
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d attack connections could not even connect", f, n)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns
}

// healthLatency GETs /health on a fresh connection and returns how long the
// answer took; it fails the test past limit.
func healthLatency(t *testing.T, addr string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c := http.Client{Timeout: limit, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/health")
	if err != nil {
		t.Fatalf("/health during the attack: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/health during the attack: %d", resp.StatusCode)
	}
	return time.Since(start)
}

// closedBy counts the connections the server has closed (EOF or reset,
// after any response) before deadline, and tallies the response statuses.
func closedBy(conns []net.Conn, deadline time.Time) (closed int, statuses map[string]int) {
	var mu sync.Mutex
	statuses = map[string]int{}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, c := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			_ = c.SetReadDeadline(deadline)
			br := bufio.NewReader(c)
			status := "none"
			if line, err := br.ReadString('\n'); err == nil {
				if f := strings.Fields(line); len(f) > 1 {
					status = f[1]
				}
			}
			_, err := io.Copy(io.Discard, br)
			ok := err == nil || errors.Is(err, syscall.ECONNRESET)
			mu.Lock()
			statuses[status]++
			if ok {
				closed++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return closed, statuses
}

// TestSlowBodyAttack: 2,000 unauthenticated POSTs each announcing a 100 KB
// body and sending one byte, 300 authenticated ones doing the same, and 200
// clients sending half their headers: /health keeps answering, and the
// server closes every one of those connections in bounded time (plain
// net/http answers the 401s and then waits forever for the rest of the
// bodies, holding a descriptor each).
func TestSlowBodyAttack(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 2,500 connections")
	}
	e := newTestEnv(t, nil)
	lim := httpserver.Limits{
		ReadHeaderTimeout: 2 * time.Second, BodyTimeout: 2 * time.Second, BodyMinRate: 16 << 10,
		BodyIdleTimeout: time.Second, WriteTimeout: time.Minute, IdleTimeout: time.Minute,
		MaxConns: 10000, // not the defence here: every attacker is let in
	}
	addr := hardened(t, e.api, lim)
	const partial = "POST /instances HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n"
	start := time.Now()
	anon := attack(t, addr, "127.0.0.2", 2000, partial+"\r\n{")
	authed := attack(t, addr, "127.0.0.3", 300, partial+"Authorization: Bearer "+mint(t)+"\r\n\r\n{")
	slowHdr := attack(t, addr, "127.0.0.4", 200, "GET /health HTTP/1.1\r\nHost: x\r\n")
	t.Logf("2,500 attack connections open after %v", time.Since(start).Round(time.Millisecond))
	var lat []time.Duration
	for range 5 {
		lat = append(lat, healthLatency(t, addr, 2*time.Second))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("/health during the attack: min %v, max %v", lat[0], lat[len(lat)-1])

	// Unauthenticated: 401 + Connection: close at once. Authenticated: the
	// body read is cut by the idle deadline. Slow headers: cut by
	// ReadHeaderTimeout. All well inside 10 s.
	deadline := time.Now().Add(10 * time.Second)
	for _, g := range []struct {
		name  string
		conns []net.Conn
		want  string
	}{{"unauthenticated", anon, "401"}, {"authenticated", authed, "408"}, {"slow headers", slowHdr, ""}} {
		closed, statuses := closedBy(g.conns, deadline)
		t.Logf("%s: %d/%d closed by the server, statuses %v", g.name, closed, len(g.conns), statuses)
		if closed != len(g.conns) {
			t.Errorf("%s: only %d of %d connections closed by the server", g.name, closed, len(g.conns))
		}
		if g.want != "" && statuses[g.want] != len(g.conns) {
			t.Errorf("%s: statuses %v, want all %s", g.name, statuses, g.want)
		}
	}
	healthLatency(t, addr, 2*time.Second)
}

// TestPerIPCapKeepsOthersServed: one client IP holding its share of
// connections cannot lock out another.
func TestPerIPCapKeepsOthersServed(t *testing.T) {
	e := newTestEnv(t, nil)
	addr := hardened(t, e.api, httpserver.Limits{ReadHeaderTimeout: time.Minute, MaxConns: 4000, MaxConnsPerIP: 100})
	conns := attack(t, addr, "127.0.0.5", 1000, "GET /health HTTP/1.1\r\n") // headers never finished
	healthLatency(t, addr, 2*time.Second)
	_, statuses := closedBy(conns, time.Now().Add(500*time.Millisecond))
	if statuses["503"] != 900 {
		t.Fatalf("over-cap connections from one IP: %v, want 900 answered 503", statuses)
	}
}

// TestStreamsOutliveBodyDeadlines: with body deadlines far shorter than the
// requests, a wait, an event stream and a steady registry upload all
// complete through the hardened server.
func TestStreamsOutliveBodyDeadlines(t *testing.T) {
	bus := events.New(events.Options{})
	defer bus.Close()
	w := &fakeWaiter{answer: func(ctx context.Context) (events.WaitResult, error) {
		select {
		case <-time.After(800 * time.Millisecond):
		case <-ctx.Done():
			return events.WaitResult{}, ctx.Err()
		}
		return events.WaitResult{State: state.Running, Reached: state.Running}, nil
	}}
	e := newTestEnv(t, func(o *Options) { o.Waiter = w; o.Events = bus })
	lim := httpserver.Limits{ReadHeaderTimeout: 200 * time.Millisecond, BodyTimeout: 200 * time.Millisecond,
		BodyMinRate: 16 << 10, BodyIdleTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond}
	addr := hardened(t, e.api, lim)
	base := "http://" + addr
	tok := mint(t)
	get := func(path string) *http.Response {
		req, _ := http.NewRequest("GET", base+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return resp
	}

	// A wait that answers after 4x every limit.
	resp := get("/instances/web/wait?state=Running&timeout=5m")
	var body map[string]any
	jsonBody(t, resp, &body)
	if body["state"] != "Running" {
		t.Fatalf("wait: %v", body)
	}

	// An event stream still delivers after the limits have passed.
	resp = get("/events")
	defer resp.Body.Close()
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	opened := time.Now()
	for time.Since(opened) < 3*lim.BodyTimeout {
		if _, ok := <-lines; !ok {
			t.Fatalf("event stream closed after %v", time.Since(opened))
		}
	}
	bus.Publish(events.StateChange("abc", state.Stopped, state.Initializing, "start"))
	delivered := false
	for l := range lines {
		if delivered = strings.Contains(l, "abc"); delivered {
			break
		}
	}
	if !delivered {
		t.Fatalf("event stream ended before delivering the event published after %v", time.Since(opened))
	}

	// A 256 KB monolithic blob upload at ~128 KB/s (2 s, 10x the body
	// timeout) into the built-in registry.
	blob := []byte(strings.Repeat("x", 256<<10))
	sum := sha256.Sum256(blob)
	pr, pw := io.Pipe()
	go func() {
		for i := 0; i < len(blob); i += 8 << 10 {
			if _, err := pw.Write(blob[i : i+8<<10]); err != nil {
				return
			}
			time.Sleep(60 * time.Millisecond)
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", base+"/v2/apps/slow/blobs/uploads/?digest=sha256:"+hex.EncodeToString(sum[:]), pr)
	req.ContentLength = int64(len(blob))
	req.Header.Set("Authorization", "Bearer "+mint(t, auth.ImageWrite))
	started := time.Now()
	up, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("steady upload: %v", err)
	}
	up.Body.Close()
	if up.StatusCode != http.StatusCreated {
		t.Fatalf("steady upload: %d after %v", up.StatusCode, time.Since(started))
	}
	t.Logf("256 KB upload at ~128 KB/s took %v under a %v body timeout", time.Since(started).Round(time.Millisecond), lim.BodyTimeout)
}

// TestAutoPullNeedsImageWrite: creating an instance from an image the store
// does not hold pulls it, which is an image write. With only
// instance:write the daemon must not connect anywhere (it used to: the
// create was a way to make it fetch any URL and echo the answer).
func TestAutoPullNeedsImageWrite(t *testing.T) {
	tier.Root(t, "the allowed pull converts the image (chown to any uid)")
	var hits atomic.Int64
	reg := ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0)))
	regSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		reg.ServeHTTP(w, r)
	}))
	defer regSrv.Close()
	host := strings.TrimPrefix(regSrv.URL, "http://")
	testimage.Push(t, host, "probe:v1", testimage.Busybox(t, testimage.Options{Cmd: []string{"true"}}))
	pushed := hits.Load()

	dir := t.TempDir()
	store, err := images.New(images.Config{Dir: filepath.Join(dir, "images"), AllowRegistries: []string{"127.0.0.1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	m, err := instances.New(context.Background(), instances.Config{
		Paths: paths.New(filepath.Join(dir, "data")), Hypervisor: fakeHypervisor{},
		Images: daemon.ImageResolver{Store: store}, Events: events.New(events.Options{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	e := newTestEnv(t, func(o *Options) { o.Instances = m; o.Images = store })
	body := `{"name":"probe","image":"` + host + `/probe:v1"}`

	resp := e.do("POST", "/instances", mint(t, auth.InstanceWrite), body)
	code, msg := errBody(t, resp)
	if resp.StatusCode != 403 || code != "forbidden" || !strings.Contains(msg, "image:write") || !strings.Contains(msg, "POST /images") {
		t.Fatalf("create with instance:write only: %d %s %q, want 403 naming image:write and POST /images", resp.StatusCode, code, msg)
	}
	if n := hits.Load() - pushed; n != 0 {
		t.Fatalf("the daemon connected to the registry %d times for a create that may not pull", n)
	}

	// With image:write as well the create pulls (and then fails to boot:
	// the fake hypervisor launches nothing).
	resp = e.do("POST", "/instances", mint(t, auth.InstanceWrite, auth.ImageWrite), body)
	resp.Body.Close()
	if resp.StatusCode == 403 || hits.Load() == pushed {
		t.Fatalf("create with image:write: %d after %d registry requests", resp.StatusCode, hits.Load()-pushed)
	}
	if img, err := store.Get(context.Background(), host+"/probe:v1"); err != nil || img.Status != images.StatusReady {
		t.Fatalf("image after the allowed pull: %+v %v", img, err)
	}

	// Once the image is in the store, instance:write is enough and nothing
	// is fetched again.
	before := hits.Load()
	resp = e.do("POST", "/instances", mint(t, auth.InstanceWrite), body)
	_, msg = errBody(t, resp)
	if resp.StatusCode == 403 || !strings.Contains(msg, "fake hypervisor") || hits.Load() != before {
		t.Fatalf("create from a stored image with instance:write: %d %q, %d registry requests", resp.StatusCode, msg, hits.Load()-before)
	}
}
