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
