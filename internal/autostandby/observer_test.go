package autostandby

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestConntrackConnsKeepsInboundTCPToGuests(t *testing.T) {
	flow := func(proto uint8, src, dst string, sport, dport uint16, st uint8) *netlink.ConntrackFlow {
		return &netlink.ConntrackFlow{
			Forward:   netlink.IPTuple{Protocol: proto, SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst), SrcPort: sport, DstPort: dport},
			ProtoInfo: &netlink.ProtoInfoTCP{State: st},
		}
	}
	flows := []*netlink.ConntrackFlow{
		flow(unix.IPPROTO_TCP, "10.100.0.1", guest, 40000, 80, 3),        // established, inbound
		flow(unix.IPPROTO_TCP, "10.100.0.1", guest, 40001, 80, 7),        // time_wait, inbound
		flow(unix.IPPROTO_TCP, guest, "1.1.1.1", 50000, 443, 3),          // outbound from the guest
		flow(unix.IPPROTO_UDP, "10.100.0.1", guest, 5353, 53, 0),         // not TCP
		flow(unix.IPPROTO_TCP, "10.100.0.1", "10.100.0.9", 40002, 80, 3), // another address
	}
	got := conntrackConns(flows, map[netip.Addr]bool{netip.MustParseAddr(guest): true})
	if len(got) != 2 || !got[0].Active || got[1].Active || got[0].DstPort != 80 || got[0].SrcPort != 40000 {
		t.Fatalf("got %+v", got)
	}
}
