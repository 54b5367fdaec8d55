package guestnet

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/network"
	"hypeman/internal/network/nettest"
)

func TestParsePlan(t *testing.T) {
	p, err := ParsePlan(guestconfig.Network{MAC: "02:AA:bb:cc:dd:01", Address: "10.100.0.5/16", Gateway: "10.100.0.1"})
	require.NoError(t, err)
	assert.Equal(t, "02:aa:bb:cc:dd:01", p.MAC.String())
	assert.Equal(t, netip.MustParsePrefix("10.100.0.5/16"), p.Addr)
	assert.Equal(t, netip.MustParseAddr("10.100.0.1"), p.Gateway)

	p, err = ParsePlan(guestconfig.Network{Address: "fd00::5/64", Gateway: "fd00::1"})
	require.NoError(t, err)
	assert.Nil(t, p.MAC, "empty MAC keeps the NIC's")
	assert.True(t, p.Addr.Addr().Is6())

	p, err = ParsePlan(guestconfig.Network{Address: "10.0.0.2/24"})
	require.NoError(t, err)
	assert.False(t, p.Gateway.IsValid(), "no gateway, no default route")

	for _, bad := range []guestconfig.Network{
		{MAC: "nope", Address: "10.0.0.2/24"},
		{MAC: "01:00:5e:00:00:01", Address: "10.0.0.2/24"}, // multicast
		{MAC: "02:00:00:00:00:00:00:01", Address: "10.0.0.2/24"},
		{Address: "10.0.0.2"}, // no prefix length
		{Address: ""},
		{Address: "0.0.0.0/0"},
		{Address: "127.0.0.2/8"},
		{Address: "10.0.0.2/24", Gateway: "fd00::1"},
		{Address: "10.0.0.2/24", Gateway: "10.0.0.2"},
		{Address: "10.0.0.2/24", Gateway: "gateway"},
	} {
		_, err := ParsePlan(bad)
		assert.ErrorIs(t, err, ErrInvalid, "%+v", bad)
	}
}

func TestPickLink(t *testing.T) {
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	links := []Link{
		{Index: 1, Name: "lo", MAC: mac("00:00:00:00:00:00")},
		{Index: 4, Name: "eth1", MAC: mac("02:00:00:00:00:04"), Ethernet: true},
		{Index: 2, Name: "eth0", MAC: mac("02:00:00:00:00:02"), Ethernet: true},
		{Index: 3, Name: "sit0"},
	}
	name := func(l Link, ok bool) string {
		if !ok {
			return ""
		}
		return l.Name
	}
	assert.Equal(t, "eth1", name(PickLink(links, mac("02:00:00:00:00:04"), "eth0")), "MAC wins")
	assert.Equal(t, "eth1", name(PickLink(links, mac("02:00:00:00:00:99"), "eth1")), "then the preferred name")
	assert.Equal(t, "eth0", name(PickLink(links, mac("02:00:00:00:00:99"), "")), "then the lowest index")
	assert.Equal(t, "eth0", name(PickLink(links, nil, "gone")))
	assert.Equal(t, "", name(PickLink(links[:1], nil, "")), "loopback never")
	assert.Equal(t, "", name(PickLink(links[3:], nil, "sit0")), "nor non-Ethernet links")
}

func TestParseNetlink(t *testing.T) {
	msg := func(typ uint16, seq uint32, data []byte) []byte {
		b := make([]byte, 16, 16+len(data)+3)
		binary.NativeEndian.PutUint32(b[0:4], uint32(16+len(data)))
		binary.NativeEndian.PutUint16(b[4:6], typ)
		binary.NativeEndian.PutUint32(b[8:12], seq)
		b = append(b, data...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	attrs := append(rtattr(unix.IFLA_IFNAME, []byte("eth0\x00")), rtattr(unix.IFLA_ADDRESS, []byte{2, 0, 0, 0, 0, 1})...)
	dgram := append(msg(unix.RTM_NEWLINK, 7, append(ifinfomsg(2, unix.IFF_UP, 0), attrs...)), msg(unix.NLMSG_DONE, 7, []byte{0, 0, 0, 0})...)
	msgs, err := parseMessages(dgram)
	require.NoError(t, err)
	require.Len(t, msgs, 2)
	assert.Equal(t, uint16(unix.RTM_NEWLINK), msgs[0].typ)
	assert.Equal(t, uint32(7), msgs[0].seq)
	got := parseAttrs(msgs[0].data[unix.SizeofIfInfomsg:])
	require.Len(t, got, 2)
	assert.Equal(t, "eth0", string(trimNUL(got[0].value)))
	assert.Equal(t, []byte{2, 0, 0, 0, 0, 1}, got[1].value)

	_, err = parseMessages([]byte{200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	assert.Error(t, err, "length beyond the datagram")
	assert.Len(t, parseAttrs([]byte{99, 0, 1, 0, 1, 2}), 0, "truncated attribute ignored")
}

func TestARPAnnouncement(t *testing.T) {
	mac, _ := net.ParseMAC("02:11:22:33:44:55")
	got := hex.EncodeToString(ARPAnnouncement(mac, netip.MustParseAddr("10.1.2.3")))
	assert.Equal(t, "0001"+"0800"+"06"+"04"+"0001"+"021122334455"+"0a010203"+"000000000000"+"0a010203", got)
	assert.ErrorIs(t, AnnounceIPv4(1, mac, netip.MustParseAddr("fd00::1")), ErrInvalid)
}

// netPair is a "guest" namespace whose NIC g0 is a veth to a "peer"
// namespace (p0, 10.77.0.1/24) that accepts gratuitous ARP, so the
// announcement is observable in the peer's neighbour table.
type netPair struct {
	guest, peer string
	guestNS     *network.NetNS
}

func newNetPair(t *testing.T) *netPair {
	t.Helper()
	peer := nettest.NewNS(t)
	guest := nettest.NewNS(t)
	nettest.Run(t, peer, "ip", "link", "add", "p0", "type", "veth", "peer", "name", "g0")
	nettest.Run(t, peer, "ip", "link", "set", "g0", "netns", guest)
	nettest.Run(t, peer, "ip", "addr", "add", "10.77.0.1/24", "dev", "p0")
	nettest.Run(t, peer, "sysctl", "-qw", "net.ipv4.conf.p0.arp_accept=1")
	nettest.Run(t, peer, "ip", "link", "set", "p0", "up")
	ns, err := network.OpenNetNS(guest)
	require.NoError(t, err)
	t.Cleanup(func() { ns.Close() })
	return &netPair{guest: guest, peer: peer, guestNS: ns}
}

func (p *netPair) configure(t *testing.T, n guestconfig.Network, opts Options) (Result, error) {
	t.Helper()
	var res Result
	err := p.guestNS.Do(func() error {
		var err error
		res, err = Configure(context.Background(), n, opts)
		return err
	})
	return res, err
}

// neighMAC waits for the peer's neighbour entry of ip (learnt from the
// announcement alone: no traffic was sent to ip yet) and returns its MAC.
func (p *netPair) neighMAC(t *testing.T, ip string) string {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		out := nettest.Run(t, p.peer, "ip", "neigh", "show", ip, "dev", "p0")
		if f := strings.Fields(out); len(f) >= 3 && f[1] == "lladdr" {
			return f[2]
		}
		if time.Now().After(deadline) {
			t.Fatalf("peer never learnt %s from the ARP announcement: %q", ip, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reach dials the guest from the peer namespace and reads a greeting.
func (p *netPair) reach(t *testing.T, ip string) error {
	t.Helper()
	l := nettest.Listen(t, p.guest, ip+":8080")
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			_, _ = c.Write([]byte("hi"))
			c.Close()
		}
	}()
	peer, err := network.OpenNetNS(p.peer)
	require.NoError(t, err)
	defer peer.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := peer.DialContext(ctx, "tcp", ip+":8080")
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(b) != "hi" {
		return errors.New("unexpected greeting " + string(b))
	}
	return nil
}

// TestConfigureInNetNS configures a veth "NIC" in a throwaway namespace the
// way the init does at boot, then re-addresses it the way a fork is
// (new MAC and IP), checking addresses, routes, reachability and the
// gratuitous ARP each time.
func TestConfigureInNetNS(t *testing.T) {
	p := newNetPair(t)

	nettest.Run(t, p.guest, "ip", "link", "set", "lo", "down")
	require.NoError(t, p.guestNS.Do(LoopbackUp))
	assert.Contains(t, nettest.Run(t, p.guest, "ip", "-o", "link", "show", "lo"), "UP")

	// Boot: the NIC's MAC is found by the fallback (first Ethernet link)
	// and changed to the wanted one.
	res, err := p.configure(t, guestconfig.Network{MAC: "02:00:00:77:00:02", Address: "10.77.0.2/24", Gateway: "10.77.0.1"}, Options{LinkWait: time.Second})
	require.NoError(t, err)
	assert.Equal(t, "g0", res.Link)
	assert.True(t, res.MACChanged)
	assert.Empty(t, res.Removed)
	assert.NoError(t, res.AnnounceErr)
	assert.Equal(t, "02:00:00:77:00:02", p.neighMAC(t, "10.77.0.2"))
	assert.Equal(t, "02:00:00:77:00:02\n", nettest.Run(t, p.guest, "cat", "/sys/class/net/g0/address"))
	assert.Contains(t, nettest.Run(t, p.guest, "ip", "route", "show", "default"), "default via 10.77.0.1 dev g0")
	require.NoError(t, p.reach(t, "10.77.0.2"))

	// Idempotent.
	res, err = p.configure(t, guestconfig.Network{MAC: "02:00:00:77:00:02", Address: "10.77.0.2/24", Gateway: "10.77.0.1"}, Options{})
	require.NoError(t, err)
	assert.False(t, res.MACChanged)
	assert.Empty(t, res.Removed)

	// A bad request changes nothing.
	_, err = p.configure(t, guestconfig.Network{MAC: "02:00:00:77:00:03", Address: "10.77.0.3"}, Options{})
	require.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, nettest.Run(t, p.guest, "ip", "-o", "-4", "addr", "show", "dev", "g0"), "10.77.0.2/24")

	// Fork: the NIC still has the source's MAC; the preferred name finds it.
	t0 := time.Now()
	res, err = p.configure(t, guestconfig.Network{MAC: "02:00:00:77:00:03", Address: "10.77.0.3/24", Gateway: "10.77.0.1"}, Options{Prefer: "g0"})
	require.NoError(t, err)
	t.Logf("re-address (link down, MAC, address, up, route, ARP): %s", time.Since(t0))
	assert.True(t, res.MACChanged)
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.77.0.2/24")}, res.Removed)
	assert.NoError(t, res.AnnounceErr)
	assert.Equal(t, "02:00:00:77:00:03", p.neighMAC(t, "10.77.0.3"))
	addrs := nettest.Run(t, p.guest, "ip", "-o", "-4", "addr", "show", "dev", "g0")
	assert.Contains(t, addrs, "10.77.0.3/24")
	assert.NotContains(t, addrs, "10.77.0.2/")
	assert.Contains(t, nettest.Run(t, p.guest, "ip", "route", "show", "default"), "default via 10.77.0.1 dev g0")
	require.NoError(t, p.reach(t, "10.77.0.3"))

	// A gateway outside the subnet gets an on-link route.
	_, err = p.configure(t, guestconfig.Network{Address: "10.77.0.3/32", Gateway: "10.77.0.1"}, Options{NoAnnounce: true})
	require.NoError(t, err)
	assert.Contains(t, nettest.Run(t, p.guest, "ip", "route", "show", "default"), "onlink")

	// IPv6 replaces the IPv4 configuration (one address per guest).
	res, err = p.configure(t, guestconfig.Network{Address: "fd77::3/64", Gateway: "fd77::1"}, Options{})
	require.NoError(t, err)
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.77.0.3/32")}, res.Removed)
	assert.Contains(t, nettest.Run(t, p.guest, "ip", "-o", "-6", "addr", "show", "dev", "g0"), "fd77::3/64")
	assert.Contains(t, nettest.Run(t, p.guest, "ip", "-6", "route", "show", "default"), "default via fd77::1 dev g0")
	assert.Empty(t, nettest.Run(t, p.guest, "ip", "-o", "-4", "addr", "show", "dev", "g0"))

	// Kernel errors come back as errnos.
	require.NoError(t, p.guestNS.Do(func() error {
		r, err := openRTNL()
		if err != nil {
			return err
		}
		defer r.close()
		assert.ErrorIs(t, r.setUp(9999, true), unix.ENODEV)
		assert.ErrorIs(t, r.delAddr(res.Index, netip.MustParsePrefix("10.9.9.9/24")), unix.EADDRNOTAVAIL)
		return nil
	}))

	// No NIC at all.
	nettest.Run(t, p.guest, "ip", "link", "del", "g0")
	_, err = p.configure(t, guestconfig.Network{Address: "10.77.0.3/24"}, Options{LinkWait: 50 * time.Millisecond})
	assert.ErrorIs(t, err, ErrNoLink)
}
