package autostandby

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"hypeman/internal/network"
	"hypeman/internal/network/nettest"
)

// The netlink observer, in a network namespace of this test with
// connection tracking on (an nftables ct rule, like the daemon's
// firewall): an open connection is active, a closed one lingers as
// inactive (what lets a short request between two polls count).
func TestConntrackObserverInNetNS(t *testing.T) {
	nettest.RequireRoot(t)
	ns := nettest.NewNS(t)
	nettest.Run(t, ns, "ip", "link", "set", "lo", "up")
	nettest.Run(t, ns, "nft", "add table inet t; add chain inet t out { type filter hook output priority 0; }; add rule inet t out ct state established,related accept")
	h, err := network.OpenNetNS(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ctx := context.Background()
	ln, err := h.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	port, _ := strconv.Atoi(ln.Addr().(*net.TCPAddr).AddrPort().String()[len("127.0.0.1:"):])
	obs := ConntrackObserver{InNS: h.Do}
	guestIP := netip.MustParseAddr("127.0.0.1")
	guests := map[netip.Addr]bool{guestIP: true}
	dial := func() net.Conn {
		c, err := h.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	find := func(local net.Addr) (Conn, bool) {
		lp := local.(*net.TCPAddr).AddrPort()
		start := time.Now()
		conns, err := obs.Connections(ctx, guests)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("dump: %d connections in %s", len(conns), time.Since(start))
		for _, c := range conns {
			if c.SrcPort == lp.Port() && int(c.DstPort) == port && c.Dst == guestIP {
				return c, true
			}
		}
		return Conn{}, false
	}
	open := dial()
	if c, ok := find(open.LocalAddr()); !ok || !c.Active {
		t.Fatalf("open connection: found=%v %+v", ok, c)
	}
	short := dial()
	local := short.LocalAddr()
	short.Close()
	open.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, ok := find(local)
		if ok && !c.Active {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("closed connection: found=%v %+v", ok, c)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
