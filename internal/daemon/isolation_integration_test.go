package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"hypeman/internal/daemon"
	"hypeman/internal/guest/agent"
	"hypeman/internal/health"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/network/ingress"
	"hypeman/internal/network/nettest"
	"hypeman/internal/testutil"
	"hypeman/internal/testutil/testimage"
)

// Real guests on a bridge in a netns this test owns: guest A cannot open a
// connection to guest B (directly on the bridge, or routed through the
// gateway) nor to a service on the host, while A still reaches the outside
// through NAT, the host reaches B, B's health check passes and B's ingress
// answers on loopback.
func TestGuestIsolation(t *testing.T) {
	t.Parallel()
	nettest.RequireRoot(t)
	ns := nettest.NewNS(t)
	// Hosts with br_netfilter hand bridged frames to the IP forward hook,
	// where the firewall drops guest-to-guest traffic as well. Turn that
	// off in this namespace so the direct A → B check below proves the
	// bridge port isolation on its own.
	const brnf = "/proc/sys/net/bridge/bridge-nf-call-iptables"
	if _, err := os.Stat(brnf); err == nil {
		nettest.Run(t, ns, "sh", "-c", "echo 0 > "+brnf)
	}
	outside := nettest.AddOutside(t, ns)
	serveHTTP(t, outside, "192.0.2.2:9000", "outside")
	// ingress_listen is left at its default: loopback.
	d := newDaemonWith(t, map[string]string{"network_mode": "bridge", "network_netns": ns})

	ref := testimage.Push(t, testimage.Registry(t), "test/isol", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"},
	}))
	ctx := context.Background()
	create := func(name string, hc *health.Check) *instances.Instance {
		in, err := d.Instances.Create(ctx, instances.CreateParams{Name: name, Image: ref, Size: "256MB", VCPUs: 1, HealthCheck: hc})
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	a := create("iso-a", nil)
	b := create("iso-b", &health.Check{Type: health.HTTP, Port: 8080, Path: "/", ExpectedStatus: 200,
		Interval: 2 * time.Second, Timeout: 2 * time.Second, FailureThreshold: 3, SuccessThreshold: 1})
	a = waitState(t, d, a.ID, state.Running, bootTimeout)
	b = waitState(t, d, b.ID, state.Running, bootTimeout)
	lease, ok := d.Network.Lease(a.ID)
	if !ok {
		t.Fatal("no lease for A")
	}
	gateway := lease.Gateway
	// A host service on every address of the host; others reach it.
	_, svcPort, _ := net.SplitHostPort(serveHTTP(t, ns, "0.0.0.0:0", "host service").String())
	nettest.AssertReachable(t, outside, "192.0.2.1:"+svcPort)
	bURL := "http://" + net.JoinHostPort(b.Network.IP, "8080") + "/"

	// Both guests' TAPs are isolated bridge ports.
	for _, in := range []*instances.Instance{a, b} {
		l, _ := d.Network.Lease(in.ID)
		if out := nettest.Run(t, ns, "bridge", "-d", "link", "show", "dev", l.TAP); !strings.Contains(out, "isolated on") {
			t.Fatalf("%s's TAP %s is not isolated:\n%s", in.Name, l.TAP, out)
		}
	}

	// What must work, first: it proves A's network is up, so the failures
	// below are the isolation and not a guest that is not ready.
	if out := guestFetchOK(t, d, a.ID, "http://192.0.2.2:9000/"); !strings.Contains(out, "outside") {
		t.Fatalf("A → outside: %q", out)
	}
	if body := getVia(t, d.Network.DialContext, bURL); !strings.Contains(body, "hello from iso-b") {
		t.Fatalf("host → B: %q", body)
	}

	guestFetchFails(t, d, a.ID, bURL)                                             // A → B on the bridge
	guestFetchFails(t, d, a.ID, "http://"+net.JoinHostPort(gateway, svcPort)+"/") // A → the host (gateway address)
	guestFetchFails(t, d, a.ID, "http://192.0.2.1:"+svcPort+"/")                  // A → the host (another of its addresses)
	guestRun(t, d, a.ID, "ip", "route", "add", b.Network.IP+"/32", "via", gateway)
	guestFetchFails(t, d, a.ID, bURL) // A → gateway → B

	// B's published path and health check still work.
	port := testutil.FreePort(t)
	if _, err := d.Ingress.Create(ctx, ingress.CreateRequest{Name: "iso-b", Rules: []ingress.Rule{
		{Match: ingress.Match{Port: port}, Target: ingress.Target{Instance: "iso-b", Port: 8080}},
	}}); err != nil {
		t.Fatal(err)
	}
	if body := getVia(t, nil, fmt.Sprintf("http://127.0.0.1:%d/", port)); !strings.Contains(body, "hello from iso-b") {
		t.Fatalf("B via ingress: %q", body)
	}
	waitFor(t, "B healthy", 60*time.Second, func() bool {
		g := mustGet(t, d, b.ID)
		return g.HealthStatus != nil && g.HealthStatus.Status == health.Healthy
	})
}

// serveHTTP serves body on addr inside ns and returns the bound address.
func serveHTTP(t *testing.T, ns, addr, body string) net.Addr {
	t.Helper()
	l := nettest.Listen(t, ns, addr)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr()
}

// guestExec runs argv in the guest and returns its output and exit code.
// An agent that does not answer yet (a guest just booted or restored on a
// loaded host) is retried for up to 2 minutes, as API clients do with
// wait_for_agent; the wait is logged.
func guestExec(t *testing.T, d *daemon.Daemon, id string, argv ...string) (string, int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	for {
		var out strings.Builder
		res, err := d.Instances.Exec(ctx, id, agent.ExecRequest{Argv: argv}, agent.ExecIO{Stdout: &out, Stderr: &out})
		if errors.Is(err, instances.ErrAgentUnavailable) && ctx.Err() == nil {
			t.Logf("guest agent not answering yet after %s: %v", time.Since(start).Round(time.Millisecond), err)
			time.Sleep(250 * time.Millisecond)
			continue
		}
		if err != nil {
			return out.String(), -1, err
		}
		return out.String(), res.ExitCode, nil
	}
}

// guestRun is guestExec that fails the test unless argv exits 0.
func guestRun(t *testing.T, d *daemon.Daemon, id string, argv ...string) string {
	t.Helper()
	out, code, err := guestExec(t, d, id, argv...)
	if err != nil || code != 0 {
		t.Fatalf("in guest: %s: exit %d, %v: %s", strings.Join(argv, " "), code, err, out)
	}
	return out
}

// fetchArgv GETs url from inside a guest, giving up after 2 s. (Debian's
// static busybox 1.35 wget crashes with -T, so timeout(1) bounds it.)
func fetchArgv(url string) []string {
	return []string{"timeout", "2", "wget", "-q", "-O", "-", url}
}

// guestFetchOK polls (bounded) until the guest fetches url.
func guestFetchOK(t *testing.T, d *daemon.Daemon, id, url string) string {
	t.Helper()
	var out string
	var code int
	var err error
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if out, code, err = guestExec(t, d, id, fetchArgv(url)...); err == nil && code == 0 {
			return out
		}
	}
	t.Fatalf("guest cannot fetch %s: exit %d, %v: %s", url, code, err, out)
	return ""
}

// guestFetchFails asserts that each of three attempts by the guest to
// fetch url fails.
func guestFetchFails(t *testing.T, d *daemon.Daemon, id, url string) {
	t.Helper()
	for range 3 {
		start := time.Now()
		out, code, err := guestExec(t, d, id, fetchArgv(url)...)
		if err != nil {
			t.Fatalf("exec in guest: %v", err)
		}
		if code == 0 {
			t.Fatalf("guest fetched %s (%q), want it blocked", url, out)
		}
		t.Logf("guest → %s: exit %d after %v: %s", url, code, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	}
}
