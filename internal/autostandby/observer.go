package autostandby

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Conn is one inbound TCP connection to a guest, as the host sees it.
type Conn struct {
	Src     netip.Addr
	SrcPort uint16
	Dst     netip.Addr // the guest's address
	DstPort uint16
	// Active is false once the connection is closing down for good
	// (TIME_WAIT, CLOSE): it no longer keeps the guest awake, but its
	// entry still proves recent activity.
	Active bool
}

// key identifies a connection across polls.
type key struct {
	src, dst         netip.Addr
	srcPort, dstPort uint16
}

func (c Conn) key() key { return key{c.Src, c.Dst, c.SrcPort, c.DstPort} }

// Observer lists the inbound TCP connections to guests. One call serves
// every tracked instance; the controller filters by destination.
type Observer interface {
	// Connections returns the connections whose destination is one of
	// guests (connections initiated towards the guest, whatever their
	// state).
	Connections(ctx context.Context, guests map[netip.Addr]bool) ([]Conn, error)
	// Mode is the status's tracking_mode (e.g. conntrack_netlink_v4_tcp).
	Mode() string
}

// ConntrackObserver reads the IPv4 conntrack table over netlink in the
// network namespace that holds the guests' bridge. InNS runs a function on
// a thread inside that namespace (network.Manager.InNetNS); nil means the
// daemon's own namespace.
type ConntrackObserver struct {
	InNS func(fn func() error) error
}

// Mode implements Observer.
func (ConntrackObserver) Mode() string { return "conntrack_netlink_v4_tcp" }

// Connections implements Observer.
func (o ConntrackObserver) Connections(ctx context.Context, guests map[netip.Addr]bool) ([]Conn, error) {
	var flows []*netlink.ConntrackFlow
	dump := func() error {
		h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
		if err != nil {
			return err
		}
		defer h.Close()
		flows, err = h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		return err
	}
	var err error
	if o.InNS != nil {
		err = o.InNS(dump)
	} else {
		err = dump()
	}
	if err != nil {
		return nil, fmt.Errorf("conntrack dump: %w", err)
	}
	return conntrackConns(flows, guests), nil
}

// conntrackConns keeps the TCP flows initiated towards a guest.
func conntrackConns(flows []*netlink.ConntrackFlow, guests map[netip.Addr]bool) []Conn {
	var out []Conn
	for _, f := range flows {
		if f.Forward.Protocol != unix.IPPROTO_TCP {
			continue
		}
		dst, ok1 := netip.AddrFromSlice(f.Forward.DstIP)
		src, ok2 := netip.AddrFromSlice(f.Forward.SrcIP)
		if !ok1 || !ok2 || !guests[dst.Unmap()] {
			continue
		}
		active := true
		if tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP); ok {
			active = tcpActive(tcp.State)
		}
		out = append(out, Conn{Src: src.Unmap(), SrcPort: f.Forward.SrcPort, Dst: dst.Unmap(), DstPort: f.Forward.DstPort, Active: active})
	}
	return out
}

// tcpActive: conntrack's TCP states (linux nf_conntrack_tcp.h) other than
// NONE(0), TIME_WAIT(7) and CLOSE(8) are a live or opening connection.
func tcpActive(s uint8) bool { return s != 0 && s != 7 && s != 8 }
