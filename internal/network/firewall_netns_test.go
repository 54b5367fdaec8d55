package network_test

// Like bridge_test.go, this runs only inside network namespaces it creates.

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"hypeman/internal/network"
	"hypeman/internal/network/nettest"
)

// TestGuestFirewall simulates two guests (namespaces on veth pairs) and
// checks the host side of isolation: guests cannot open connections to the
// host (IPv4 or IPv6 link-local) nor to each other by routing through the
// gateway; DNS to the host's address they were given and published ingress
// ports stay open; host → guest and guest → outside (NAT) keep working.
func TestGuestFirewall(t *testing.T) {
	ns := nettest.NewNS(t)
	ctx := context.Background()
	// The gateway is also the guests' DNS server (a resolver on the bridge).
	m, err := network.New(ctx, network.Config{Mode: network.ModeBridge, NetNS: ns, StateDir: t.TempDir(), DNS: []string{"10.100.0.1"}}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	la, err := m.Allocate(ctx, "guest-a")
	if err != nil {
		t.Fatal(err)
	}
	lb, err := m.Allocate(ctx, "guest-b")
	if err != nil {
		t.Fatal(err)
	}
	a := nettest.AddGuest(t, ns, "vmbr0", la.GuestConfig().Address, la.Gateway)
	b := nettest.AddGuest(t, ns, "vmbr0", lb.GuestConfig().Address, lb.Gateway)
	outside := nettest.AddOutside(t, ns)

	nettest.Listen(t, ns, "10.100.0.1:8081") // a host service
	nettest.Listen(t, ns, "10.100.0.1:53")   // the host's resolver (TCP)
	nettest.Listen(t, ns, "0.0.0.0:9090")    // an ingress port
	nettest.Listen(t, ns, "192.0.2.1:8083")  // a host service on another address
	nettest.Listen(t, b, lb.IP+":8080")      // guest B's server
	nettest.Listen(t, a, la.IP+":8080")      // guest A's server
	nettest.Listen(t, outside, "192.0.2.2:9000")

	// Paths that must work (also proving the setup is sound, so the blocked
	// ones below are blocked by the rules and not by a broken network).
	nettest.AssertReachable(t, ns, la.IP+":8080")         // host → guest (health checks, ingress proxy)
	nettest.AssertReachable(t, a, "192.0.2.2:9000")       // guest → outside through NAT
	nettest.AssertReachable(t, a, "10.100.0.1:53")        // DNS on the host
	nettest.AssertReachable(t, outside, "192.0.2.1:8083") // the host service answers others

	nettest.AssertBlocked(t, a, "10.100.0.1:8081")
	nettest.AssertBlocked(t, a, "192.0.2.1:8083")
	nettest.AssertBlocked(t, a, "10.100.0.1:9090")

	// Guest → gateway → other guest: the host must not route it back out.
	nettest.Run(t, a, "ip", "route", "add", lb.IP+"/32", "via", la.Gateway)
	nettest.AssertBlocked(t, a, lb.IP+":8080")

	// Publishing an ingress port on all addresses opens it (and only it);
	// a loopback ingress opens nothing; a repeated Setup keeps the state.
	if err := m.PublishPorts(ctx, "0.0.0.0", []int{9090}); err != nil {
		t.Fatal(err)
	}
	nettest.AssertReachable(t, a, "10.100.0.1:9090")
	if err := m.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	nettest.AssertReachable(t, a, "10.100.0.1:9090")
	nettest.AssertBlocked(t, a, "10.100.0.1:8081")
	if err := m.PublishPorts(ctx, "127.0.0.1", []int{9090}); err != nil {
		t.Fatal(err)
	}
	nettest.AssertBlocked(t, a, "10.100.0.1:9090")

	// IPv6: guests are IPv4-only, but link-local addresses exist on the
	// bridge and the guest's interface anyway.
	gw6 := linkLocal(t, ns, "vmbr0")
	guestIf := strings.TrimSpace(nettest.Run(t, a, "sh", "-c", "ls /sys/class/net | grep -v '^lo$'"))
	linkLocal(t, a, guestIf)
	nettest.Listen(t, ns, "[::]:8084")
	nettest.AssertReachable(t, ns, "[::1]:8084")
	nettest.AssertBlocked(t, a, "["+gw6+"%"+guestIf+"]:8084")

	// The drops are counted for operators.
	if out := nettest.Run(t, ns, "nft", "list", "chain", "inet", "hypeman", "guest_to_host"); strings.Contains(out, "counter packets 0 bytes 0 drop\n\t}") {
		t.Fatalf("final drop counted nothing:\n%s", out)
	}
}

// linkLocal waits (bounded) until dev in ns has a usable (non-tentative)
// IPv6 link-local address and returns it.
func linkLocal(t *testing.T, ns, dev string) string {
	t.Helper()
	var last string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		last = nettest.Run(t, ns, "ip", "-j", "-6", "addr", "show", "dev", dev, "scope", "link")
		var ifs []struct {
			AddrInfo []struct {
				Local     string `json:"local"`
				Tentative bool   `json:"tentative"`
			} `json:"addr_info"`
		}
		if err := json.Unmarshal([]byte(last), &ifs); err != nil {
			t.Fatal(err)
		}
		for _, i := range ifs {
			for _, a := range i.AddrInfo {
				if ip := net.ParseIP(a.Local); ip != nil && ip.IsLinkLocalUnicast() && !a.Tentative {
					return a.Local
				}
			}
		}
	}
	t.Fatalf("no usable link-local address on %s in %s: %s", dev, ns, last)
	return ""
}
