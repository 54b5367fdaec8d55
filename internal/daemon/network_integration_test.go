package daemon_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"hypeman/internal/daemon"
	"hypeman/internal/guest/agent"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/network/ingress"
	"hypeman/internal/network/nettest"
	"hypeman/internal/testutil"
	"hypeman/internal/testutil/testimage"
)

// Guests get their own IPs on a bridge (inside a netns this test owns: the
// host namespace is never touched), serve HTTP reachable by IP and through
// an ingress port on loopback, and release their address on stop.
func TestNetworkingIPsAndIngress(t *testing.T) {
	t.Parallel()
	nettest.RequireRoot(t)
	ns := nettest.NewNS(t)
	d := newDaemonWith(t, map[string]string{"network_mode": "bridge", "network_netns": ns, "ingress_listen": "127.0.0.1"})
	host := testimage.Registry(t)
	ref := testimage.Push(t, host, "test/web", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"},
	}))
	ctx := context.Background()
	var ins []*instances.Instance
	for _, name := range []string{"web-a", "web-b"} {
		in, err := d.Instances.Create(ctx, instances.CreateParams{Name: name, Image: ref, Size: "256MB", VCPUs: 1})
		if err != nil {
			t.Fatal(err)
		}
		ins = append(ins, in)
	}
	for i, in := range ins {
		ins[i] = waitState(t, d, in.ID, state.Running, bootTimeout)
	}
	a, b := ins[0], ins[1]
	if a.Network == nil || b.Network == nil || a.Network.IP == "" || a.Network.IP == b.Network.IP || a.Network.MAC == b.Network.MAC {
		t.Fatalf("addresses: %+v / %+v", a.Network, b.Network)
	}

	// Reach each guest by its IP from inside the namespace.
	for _, in := range ins {
		body := getVia(t, d.Network.DialContext, "http://"+net.JoinHostPort(in.Network.IP, "8080")+"/")
		if !strings.Contains(body, "hello from "+in.Name) {
			t.Fatalf("%s by IP: %q", in.Name, body)
		}
	}

	// Fork web-a while it runs: the fork gets its own lease and the agent
	// re-addresses the restored guest; both answer, each at its own IP.
	f, err := d.Instances.Fork(ctx, a.ID, instances.ForkParams{Name: "web-a-fork", FromRunning: true})
	if err != nil {
		t.Fatal(err)
	}
	if f.Network == nil || f.Network.IP == "" || f.Network.IP == a.Network.IP || f.Network.MAC == a.Network.MAC {
		t.Fatalf("fork network %+v, source %+v", f.Network, a.Network)
	}
	for _, ip := range []string{a.Network.IP, f.Network.IP} {
		if body := getVia(t, d.Network.DialContext, "http://"+net.JoinHostPort(ip, "8080")+"/"); !strings.Contains(body, "hello from web-a") {
			t.Fatalf("after fork, %s: %q", ip, body)
		}
	}
	var mac strings.Builder
	if _, err := d.Instances.Exec(ctx, f.ID, agent.ExecRequest{Argv: []string{"cat", "/sys/class/net/eth0/address"}}, agent.ExecIO{Stdout: &mac}); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(mac.String()); got != f.Network.MAC {
		t.Fatalf("fork's guest MAC %q, lease %q", got, f.Network.MAC)
	}

	// Publish web-b on a loopback port through an ingress.
	port := testutil.FreePort(t)
	if _, err := d.Ingress.Create(ctx, ingress.CreateRequest{Name: "web", Rules: []ingress.Rule{
		{Match: ingress.Match{Port: port}, Target: ingress.Target{Instance: "web-b", Port: 8080}},
	}}); err != nil {
		t.Fatal(err)
	}
	if body := getVia(t, nil, fmt.Sprintf("http://127.0.0.1:%d/", port)); !strings.Contains(body, "hello from web-b") {
		t.Fatalf("via ingress: %q", body)
	}

	// Stop releases the address (and the ingress answers 502 meanwhile).
	if _, err := d.Instances.Stop(ctx, b.ID, instances.StopParams{}); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Network.Lease(b.ID); ok {
		t.Fatal("stop did not release the lease")
	}
	if got := mustGet(t, d, b.ID); got.Network == nil || got.Network.IP != "" {
		t.Fatalf("stopped instance still shows an address: %+v", got.Network)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("ingress to a stopped instance: %d", resp.StatusCode)
	}
}

// getVia GETs url, dialing with dial (nil = default), retrying for a while
// (the guest's server may need a moment after Running).
func getVia(t *testing.T, dial func(ctx context.Context, network, addr string) (net.Conn, error), url string) string {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	if dial != nil {
		tr.DialContext = dial
	}
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	var last error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		resp, err := c.Get(url)
		if err != nil {
			last = err
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 {
			return string(b)
		}
		last = fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	t.Fatalf("GET %s: %v", url, last)
	return ""
}

var _ = daemon.New
