// Package nettest gives tests throwaway network namespaces.
//
// Why: tests that create bridges, TAP devices, addresses or NAT rules, or
// that talk to guest addresses, must never touch the host's own network
// (its routes, firewall and sysctls) nor send packets outside loopback. Each
// test gets fresh namespaces with unique names, deleted on cleanup; deleting
// a namespace destroys every device inside it, so even a failed test leaves
// nothing behind. A "guest" is simulated by a second namespace joined to the
// bridge with a veth pair, so traffic crosses a real bridge.
package nettest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"hypeman/internal/network"
	"hypeman/internal/testutil/tier"
)

// RequireRoot fails the test unless it runs as root (namespaces, bridges
// and TAP devices need CAP_NET_ADMIN / CAP_SYS_ADMIN) with `ip`; in the unit
// tier it skips (package tier).
func RequireRoot(t testing.TB) {
	t.Helper()
	tier.Root(t, "it creates network namespaces, bridges and TAP devices")
	tier.Tools(t, "ip")
}

// NewNS creates a fresh named network namespace with loopback up and
// deletes it when the test ends.
func NewNS(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	b := make([]byte, 4)
	rand.Read(b)
	name := "hmt-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	Run(t, name, "ip", "link", "set", "lo", "up")
	return name
}

// Exec runs argv inside namespace ns and returns its combined output.
func Exec(ns string, argv ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...).CombinedOutput()
	return string(out), err
}

// Run is Exec that fails the test on error.
func Run(t testing.TB, ns string, argv ...string) string {
	t.Helper()
	out, err := Exec(ns, argv...)
	if err != nil {
		t.Fatalf("in netns %s: %s: %v: %s", ns, strings.Join(argv, " "), err, out)
	}
	return out
}

// AddGuest simulates a guest: a new namespace linked to bridge (in hostNS)
// by a veth pair, with address cidr (e.g. 10.100.0.2/16) and a default
// route via gw. It returns the guest namespace.
func AddGuest(t testing.TB, hostNS, bridge, cidr, gw string) string {
	t.Helper()
	guest := NewNS(t)
	b := make([]byte, 3)
	rand.Read(b)
	host, peer := "hv"+hex.EncodeToString(b), "gv"+hex.EncodeToString(b)
	Run(t, hostNS, "ip", "link", "add", host, "type", "veth", "peer", "name", peer)
	Run(t, hostNS, "ip", "link", "set", peer, "netns", guest)
	Run(t, hostNS, "ip", "link", "set", host, "master", bridge)
	Run(t, hostNS, "ip", "link", "set", host, "up")
	Run(t, guest, "ip", "addr", "add", cidr, "dev", peer)
	Run(t, guest, "ip", "link", "set", peer, "up")
	Run(t, guest, "ip", "route", "add", "default", "via", gw)
	return guest
}

// Listen opens a TCP listener inside namespace ns, closed when the test
// ends.
func Listen(t testing.TB, ns, addr string) net.Listener {
	t.Helper()
	n, err := network.OpenNetNS(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	l, err := n.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatalf("listen %s in netns %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// AddOutside simulates the network beyond the host: a new namespace linked
// to hostNS by a veth pair, hostNS at 192.0.2.1/24 and the outside at
// 192.0.2.2/24 (TEST-NET-1). The outside has no route back to the guest
// subnet, so guests reach it only through the host's NAT. It returns the
// outside namespace.
func AddOutside(t testing.TB, hostNS string) string {
	t.Helper()
	outside := NewNS(t)
	Run(t, hostNS, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "out0")
	Run(t, hostNS, "ip", "link", "set", "out0", "netns", outside)
	Run(t, hostNS, "ip", "addr", "add", "192.0.2.1/24", "dev", "up0")
	Run(t, hostNS, "ip", "link", "set", "up0", "up")
	Run(t, outside, "ip", "addr", "add", "192.0.2.2/24", "dev", "out0")
	Run(t, outside, "ip", "link", "set", "out0", "up")
	return outside
}

// dialFrom makes one TCP connection attempt from namespace ns.
func dialFrom(ns, addr string, timeout time.Duration) error {
	n, err := network.OpenNetNS(ns)
	if err != nil {
		return err
	}
	defer n.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := n.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// AssertReachable polls (up to 10 s) until a TCP connection from namespace
// ns to addr succeeds, and fails the test if none does.
func AssertReachable(t testing.TB, ns, addr string) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err = dialFrom(ns, addr, time.Second); err == nil {
			return
		}
	}
	t.Fatalf("from netns %s: cannot connect to %s: %v", ns, addr, err)
}

// AssertBlocked fails the test if any of three short TCP connection
// attempts from namespace ns to addr succeeds. Pair it with an
// AssertReachable that proves the path itself works, so a broken setup
// cannot pass for a blocked one.
func AssertBlocked(t testing.TB, ns, addr string) {
	t.Helper()
	for range 3 {
		if err := dialFrom(ns, addr, 500*time.Millisecond); err == nil {
			t.Fatalf("from netns %s: connected to %s, want it blocked", ns, addr)
		}
	}
}
