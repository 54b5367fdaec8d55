package ingress_test

// Traffic in these tests goes only to loopback, except in
// TestProxyIntoNetNS, where the proxy dials a "guest" inside network
// namespaces the test creates.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"hypeman/internal/fsutil"
	"hypeman/internal/network"
	"hypeman/internal/network/ingress"
	"hypeman/internal/network/nettest"
	"hypeman/internal/testutil"
)

// fakeResolver maps "instance:port" to a dial address; unknown instances
// are "not running".
type fakeResolver struct {
	mu    sync.Mutex
	addrs map[string]string
}

func (f *fakeResolver) set(instance string, port int, addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.addrs == nil {
		f.addrs = map[string]string{}
	}
	f.addrs[fmt.Sprintf("%s:%d", instance, port)] = addr
}

func (f *fakeResolver) GuestAddr(_ context.Context, instance string, port int) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.addrs[fmt.Sprintf("%s:%d", instance, port)]
	if !ok {
		return "", fmt.Errorf("instance %s is not running", instance)
	}
	return a, nil
}

// backend is a loopback HTTP server that reports who it is and what it saw.
func backend(t *testing.T, name string) string {
	return backendFunc(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s host=%s xff=%s path=%s", name, r.Host, r.Header.Get("X-Forwarded-For"), r.URL.Path)
	})
}

// backendFunc is a loopback HTTP server running h; it returns its address.
func backendFunc(t *testing.T, h http.HandlerFunc) string {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func newManager(t *testing.T, dir string, res ingress.Resolver, dial func(context.Context, string, string) (net.Conn, error)) *ingress.Manager {
	t.Helper()
	m, err := ingress.New(context.Background(), ingress.Config{StateDir: dir, ListenAddress: "127.0.0.1", DialContext: dial}, res, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

var client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// get requests http://127.0.0.1:port/path with the given Host header.
func get(t *testing.T, port int, host, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d%s", port, path), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s (Host %s) on port %d: %v", path, host, port, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func errorBody(t *testing.T, body string) (code, msg string) {
	t.Helper()
	var e struct{ Code, Message string }
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("error body %q is not JSON: %v", body, err)
	}
	return e.Code, e.Message
}

func TestHostRoutingAndErrors(t *testing.T) {
	res := &fakeResolver{}
	res.set("app-a", 80, backend(t, "A"))
	res.set("app-b", 8080, backend(t, "B"))
	res.set("app-c", 80, backend(t, "C"))
	m := newManager(t, t.TempDir(), res, nil)
	ctx := context.Background()
	p := testutil.FreePort(t)

	web, err := m.Create(ctx, ingress.CreateRequest{Name: "web", Rules: []ingress.Rule{
		{Match: ingress.Match{Hostname: "a.test", Port: p}, Target: ingress.Target{Instance: "app-a", Port: 80}},
		{Match: ingress.Match{Hostname: "*.wild.test", Port: p}, Target: ingress.Target{Instance: "app-b", Port: 8080}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(web.ID) != 24 || web.Name != "web" || web.CreatedAt.IsZero() {
		t.Fatalf("ingress %+v", web)
	}
	// Until a catch-all exists, unknown hosts get a JSON 404.
	if st, body := get(t, p, "nope.test", "/"); st != 404 {
		t.Fatalf("unknown host: %d %s", st, body)
	} else if code, _ := errorBody(t, body); code != "not_found" {
		t.Fatalf("code %q", code)
	}
	if _, err := m.Create(ctx, ingress.CreateRequest{Name: "fallback", Rules: []ingress.Rule{
		{Match: ingress.Match{Port: p}, Target: ingress.Target{Instance: "app-c", Port: 80}},
		{Match: ingress.Match{Hostname: "stopped.test", Port: p}, Target: ingress.Target{Instance: "app-stopped", Port: 80}},
	}}); err != nil {
		t.Fatal(err)
	}

	hostPort := "a.test:" + strconv.Itoa(p)
	for _, c := range []struct{ host, want string }{
		{hostPort, "A host=" + hostPort + " xff=127.0.0.1 path=/x"},
		{"A.TEST", "A host=A.TEST xff=127.0.0.1 path=/x"},
		{"one.wild.test", "B host=one.wild.test"},
		{"two.one.wild.test", "C "},
		{"other.test", "C host=other.test"},
		{"127.0.0.1", "C "},
	} {
		st, body := get(t, p, c.host, "/x")
		if st != 200 || !strings.HasPrefix(body, c.want) {
			t.Errorf("Host %s: %d %q, want prefix %q", c.host, st, body, c.want)
		}
	}

	// Target not running -> 502 {code, message} naming the instance.
	st, body := get(t, p, "stopped.test", "/")
	code, msg := errorBody(t, body)
	if st != 502 || code != "bad_gateway" || !strings.Contains(msg, "app-stopped") {
		t.Fatalf("stopped target: %d %s", st, body)
	}
	// Target resolves but refuses connections -> 502 too.
	res.set("app-stopped", 80, "127.0.0.1:"+strconv.Itoa(testutil.FreePort(t)))
	st, body = get(t, p, "stopped.test", "/")
	if code, _ := errorBody(t, body); st != 502 || code != "bad_gateway" {
		t.Fatalf("refused target: %d %s", st, body)
	}

	// Conflicts and bad input change nothing.
	for name, req := range map[string]ingress.CreateRequest{
		"same name": {Name: "web", Rules: []ingress.Rule{{Match: ingress.Match{Hostname: "new.test", Port: p}, Target: ingress.Target{Instance: "x", Port: 1}}}},
		"same host": {Name: "other", Rules: []ingress.Rule{{Match: ingress.Match{Hostname: "A.test", Port: p}, Target: ingress.Target{Instance: "x", Port: 1}}}},
		"same any":  {Name: "other", Rules: []ingress.Rule{{Match: ingress.Match{Port: p}, Target: ingress.Target{Instance: "x", Port: 1}}}},
	} {
		if _, err := m.Create(ctx, req); !errors.Is(err, ingress.ErrConflict) {
			t.Errorf("%s: want ErrConflict, got %v", name, err)
		}
	}
	if _, err := m.Create(ctx, ingress.CreateRequest{Name: "Bad Name"}); !errors.Is(err, ingress.ErrInvalid) {
		t.Errorf("want ErrInvalid, got %v", err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port
	if _, err := m.Create(ctx, ingress.CreateRequest{Name: "busy", Rules: []ingress.Rule{
		{Match: ingress.Match{Port: testutil.FreePort(t)}, Target: ingress.Target{Instance: "x", Port: 1}},
		{Match: ingress.Match{Port: busyPort}, Target: ingress.Target{Instance: "x", Port: 1}},
	}}); !errors.Is(err, ingress.ErrListen) {
		t.Fatalf("busy port: want ErrListen, got %v", err)
	}
	if list, _ := m.List(ctx); len(list) != 2 {
		t.Fatalf("%d ingresses after failed creates, want 2", len(list))
	}
	if ports := m.Ports(); len(ports) != 1 || ports[0] != p {
		t.Fatalf("ports %v, want [%d] (a failed create must close what it opened)", ports, p)
	}
	if got, err := m.Get(ctx, web.ID); err != nil || got.Name != "web" {
		t.Fatalf("get by id: %+v %v", got, err)
	}
	if _, err := m.Get(ctx, "missing"); !errors.Is(err, ingress.ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
}

func TestListenersFollowIngresses(t *testing.T) {
	res := &fakeResolver{}
	res.set("app", 80, backend(t, "APP"))
	m := newManager(t, t.TempDir(), res, nil)
	ctx := context.Background()
	shared, own := testutil.FreePort(t), testutil.FreePort(t)
	rule := func(host string, port int) ingress.Rule {
		return ingress.Rule{Match: ingress.Match{Hostname: host, Port: port}, Target: ingress.Target{Instance: "app", Port: 80}}
	}
	if _, err := m.Create(ctx, ingress.CreateRequest{Name: "one", Rules: []ingress.Rule{rule("one.test", shared), rule("", own)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, ingress.CreateRequest{Name: "two", Rules: []ingress.Rule{rule("two.test", shared)}}); err != nil {
		t.Fatal(err)
	}
	if st, _ := get(t, own, "x", "/"); st != 200 {
		t.Fatalf("own port: %d", st)
	}
	if err := m.Delete(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(ctx, "one"); !errors.Is(err, ingress.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", own), time.Second); err == nil {
		t.Fatal("port of the deleted ingress still accepts connections")
	}
	if st, _ := get(t, shared, "two.test", "/"); st != 200 {
		t.Fatalf("shared port lost with the other ingress: %d", st)
	}
	if st, _ := get(t, shared, "one.test", "/"); st != 404 {
		t.Fatalf("deleted rule still routed: %d", st)
	}
	// The freed port can be taken again at once.
	if _, err := m.Create(ctx, ingress.CreateRequest{Name: "three", Rules: []ingress.Rule{rule("", own)}}); err != nil {
		t.Fatalf("re-create on a freed port: %v", err)
	}
	if st, _ := get(t, own, "x", "/"); st != 200 {
		t.Fatalf("re-created port: %d", st)
	}
	if err := m.Delete(ctx, "two"); err != nil {
		t.Fatal(err)
	}
	if ports := m.Ports(); len(ports) != 1 || ports[0] != own {
		t.Fatalf("ports %v, want [%d]", ports, own)
	}
}

func TestRestoreFromState(t *testing.T) {
	dir := t.TempDir()
	res := &fakeResolver{}
	res.set("app", 80, backend(t, "APP"))
	ctx := context.Background()
	p1, p2 := testutil.FreePort(t), testutil.FreePort(t)

	m1, err := ingress.New(ctx, ingress.Config{StateDir: dir, ListenAddress: "127.0.0.1"}, res, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := m1.Create(ctx, ingress.CreateRequest{Name: "a", Rules: []ingress.Rule{{Match: ingress.Match{Hostname: "a.test", Port: p1}, Target: ingress.Target{Instance: "app", Port: 80}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m1.Create(ctx, ingress.CreateRequest{Name: "b", Rules: []ingress.Rule{{Match: ingress.Match{Port: p2}, Target: ingress.Target{Instance: "app", Port: 80}}}}); err != nil {
		t.Fatal(err)
	}
	m1.Close()
	if _, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p1), time.Second); err == nil {
		t.Fatal("listener still open after Close")
	}

	// Port p2 is taken by someone else while the daemon is down.
	squat, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p2))
	if err != nil {
		t.Fatal(err)
	}
	m2 := newManager(t, dir, res, nil)
	list, _ := m2.List(ctx)
	if len(list) != 2 || list[0].ID != a.ID || list[0].Rules[0] != a.Rules[0] || !list[0].CreatedAt.Equal(a.CreatedAt) {
		t.Fatalf("restored %+v", list)
	}
	if st, body := get(t, p1, "a.test", "/"); st != 200 || !strings.HasPrefix(body, "APP") {
		t.Fatalf("restored route: %d %s", st, body)
	}
	if errs := m2.ListenErrors(); len(errs) != 1 || !errors.Is(errs[p2], ingress.ErrListen) {
		t.Fatalf("listen errors %v", errs)
	}
	// Once the port is free, creating another rule on it revives the
	// restored one too.
	squat.Close()
	if _, err := m2.Create(ctx, ingress.CreateRequest{Name: "c", Rules: []ingress.Rule{{Match: ingress.Match{Hostname: "c.test", Port: p2}, Target: ingress.Target{Instance: "app", Port: 80}}}}); err != nil {
		t.Fatal(err)
	}
	if st, _ := get(t, p2, "anything", "/"); st != 200 {
		t.Fatalf("restored catch-all after rebinding: %d", st)
	}
	if len(m2.ListenErrors()) != 0 {
		t.Fatal("listen error not cleared")
	}
}

// TestProxyIntoNetNS runs the real path: bridge networking in a private
// namespace, a "guest" namespace on the bridge serving HTTP on its leased
// address, and the proxy (listening on loopback in the test's namespace)
// dialing the guest through the network manager.
func TestProxyIntoNetNS(t *testing.T) {
	ns := nettest.NewNS(t)
	ctx := context.Background()
	nm, err := network.New(ctx, network.Config{Mode: network.ModeBridge, NetNS: ns, StateDir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nm.Close()
	lease, err := nm.Allocate(ctx, "guest-vm")
	if err != nil {
		t.Fatal(err)
	}
	guest := nettest.AddGuest(t, ns, "vmbr0", lease.GuestConfig().Address, lease.Gateway)
	gl := nettest.Listen(t, guest, net.JoinHostPort(lease.IP, "80"))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "guest %s saw host=%s from=%s", lease.IP, r.Host, r.RemoteAddr)
	})}
	go srv.Serve(gl)
	defer srv.Close()

	res := ingress.ResolverFunc(func(ctx context.Context, instance string, port int) (string, error) {
		if l, ok := nm.Lease(instance); ok {
			return net.JoinHostPort(l.IP, strconv.Itoa(port)), nil
		}
		return "", errors.New("no such instance")
	})
	m := newManager(t, t.TempDir(), res, nm.DialContext)
	p := testutil.FreePort(t)
	if _, err := m.Create(ctx, ingress.CreateRequest{Name: "guest", Rules: []ingress.Rule{
		{Match: ingress.Match{Hostname: "guest.test", Port: p}, Target: ingress.Target{Instance: "guest-vm", Port: 80}},
		{Match: ingress.Match{Hostname: "ghost.test", Port: p}, Target: ingress.Target{Instance: "ghost", Port: 80}},
	}}); err != nil {
		t.Fatal(err)
	}
	var took []time.Duration
	for range 20 {
		start := time.Now()
		st, body := get(t, p, "guest.test", "/")
		took = append(took, time.Since(start))
		// The guest sees the bridge's address as the source: the proxy
		// dialed from inside the namespace.
		if want := "guest " + lease.IP + " saw host=guest.test from=" + lease.Gateway + ":"; st != 200 || !strings.HasPrefix(body, want) {
			t.Fatalf("%d %q, want prefix %q", st, body, want)
		}
	}
	t.Logf("request via ingress into netns (new client connection each, pooled upstream): first %v, last %v", took[0], took[len(took)-1])
	if st, body := get(t, p, "ghost.test", "/"); st != 502 {
		t.Fatalf("unknown instance: %d %s", st, body)
	}
}

// The state file carries a format version: a file without one (written
// before versions) loads as version 1; an unknown version is refused with
// an error naming the file and the version.
func TestStateFileVersion(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, ingress.StateFile)
	p := testutil.FreePort(t)
	old := fmt.Sprintf(`{"ingresses":[{"id":"abc","name":"old","rules":[{"match":{"port":%d},"target":{"instance":"app","port":80}}],"created_at":"2024-01-01T00:00:00Z"}]}`, p)
	if err := os.WriteFile(path, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	m := newManager(t, dir, &fakeResolver{}, nil)
	if list, _ := m.List(context.Background()); len(list) != 1 || list[0].Name != "old" {
		t.Fatalf("unversioned state: %+v", list)
	}
	m.Close()
	if err := os.WriteFile(path, []byte(`{"version":3,"ingresses":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ingress.New(context.Background(), ingress.Config{StateDir: dir, ListenAddress: "127.0.0.1"}, &fakeResolver{}, nil)
	var ve *fsutil.VersionError
	if !errors.As(err, &ve) || ve.Path != path || ve.Version != 3 {
		t.Fatalf("unknown version: %v", err)
	}
}
