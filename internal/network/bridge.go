package network

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Errors of bridge setup that callers (or operators) act on.
var (
	// ErrSubnetConflict: an interface or route outside our bridge already
	// covers part of the subnet; using it would shadow or break it.
	ErrSubnetConflict = errors.New("subnet conflicts with existing network")
	// ErrBridgeInUse: a link with the bridge's name exists and is not ours
	// to use (not a bridge, or it carries addresses outside the subnet,
	// e.g. a hypervisor host's LAN bridge of the same name).
	ErrBridgeInUse = errors.New("bridge name in use")
)

// withLinks runs fn with a netlink route handle opened inside the manager's
// namespace.
func (m *Manager) withLinks(fn func(h *netlink.Handle) error) error {
	return m.ns.Do(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		return fn(h)
	})
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// bridgeMAC is the bridge's fixed address. Without it a Linux bridge takes
// the lowest MAC of its ports, so the gateway's MAC (in every guest's ARP
// cache) would change whenever a VM starts or stops.
func bridgeMAC(name string) net.HardwareAddr {
	hw, _ := net.ParseMAC(MACFor("bridge:"+name, 0))
	return hw
}

// setupBridge creates (or adopts) the bridge, gives it the gateway address
// and brings it up, after checking the subnet is free in the namespace.
func (m *Manager) setupBridge() error {
	gw := netlink.Addr{IPNet: &net.IPNet{
		IP:   m.pool.gateway.AsSlice(),
		Mask: net.CIDRMask(m.pool.prefix.Bits(), 32),
	}}
	return m.withLinks(func(h *netlink.Handle) error {
		br, err := h.LinkByName(m.cfg.Bridge)
		switch {
		case isNotFound(err):
			la := netlink.NewLinkAttrs()
			la.Name = m.cfg.Bridge
			la.HardwareAddr = bridgeMAC(m.cfg.Bridge)
			if err := m.checkSubnetFree(h, -1); err != nil {
				return err
			}
			if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
				return fmt.Errorf("create bridge %s: %w", m.cfg.Bridge, err)
			}
			if br, err = h.LinkByName(m.cfg.Bridge); err != nil {
				return fmt.Errorf("bridge %s: %w", m.cfg.Bridge, err)
			}
		case err != nil:
			return fmt.Errorf("bridge %s: %w", m.cfg.Bridge, err)
		default:
			if br.Type() != "bridge" {
				return fmt.Errorf("%w: %s is a %s device, not a bridge", ErrBridgeInUse, m.cfg.Bridge, br.Type())
			}
			addrs, err := h.AddrList(br, netlink.FAMILY_V4)
			if err != nil {
				return fmt.Errorf("bridge %s addresses: %w", m.cfg.Bridge, err)
			}
			for _, a := range addrs {
				ip, _ := netip.AddrFromSlice(a.IP.To4())
				if !m.pool.prefix.Contains(ip) {
					return fmt.Errorf("%w: %s has address %s outside %s; choose another bridge name or remove it",
						ErrBridgeInUse, m.cfg.Bridge, a.IPNet, m.pool.prefix)
				}
			}
			if err := m.checkSubnetFree(h, br.Attrs().Index); err != nil {
				return err
			}
			if !bytes.Equal(br.Attrs().HardwareAddr, bridgeMAC(m.cfg.Bridge)) {
				if err := h.LinkSetHardwareAddr(br, bridgeMAC(m.cfg.Bridge)); err != nil {
					return fmt.Errorf("bridge %s: set MAC: %w", m.cfg.Bridge, err)
				}
			}
		}
		if err := h.AddrReplace(br, &gw); err != nil {
			return fmt.Errorf("bridge %s: address %s: %w", m.cfg.Bridge, gw.IPNet, err)
		}
		if err := h.LinkSetUp(br); err != nil {
			return fmt.Errorf("bridge %s: up: %w", m.cfg.Bridge, err)
		}
		return nil
	})
}

// checkSubnetFree fails when an address or route on a link other than
// bridgeIndex overlaps the subnet.
func (m *Manager) checkSubnetFree(h *netlink.Handle, bridgeIndex int) error {
	addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if a.LinkIndex == bridgeIndex || a.IPNet == nil {
			continue
		}
		if p, ok := ipNetPrefix(a.IPNet); ok && p.Overlaps(m.pool.prefix) {
			return fmt.Errorf("%w: address %s (link index %d) overlaps %s", ErrSubnetConflict, a.IPNet, a.LinkIndex, m.pool.prefix)
		}
	}
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.LinkIndex == bridgeIndex || r.Dst == nil {
			continue // the default route overlaps everything and is fine
		}
		if p, ok := ipNetPrefix(r.Dst); ok && p.Bits() > 0 && p.Overlaps(m.pool.prefix) {
			return fmt.Errorf("%w: route to %s (link index %d) overlaps %s", ErrSubnetConflict, r.Dst, r.LinkIndex, m.pool.prefix)
		}
	}
	return nil
}

func ipNetPrefix(n *net.IPNet) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits != 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip, ones).Masked(), true
}

// enableForwarding sets net.ipv4.ip_forward=1 in the namespace (sysctls
// under /proc/sys/net belong to the network namespace of the thread that
// opens them).
func (m *Manager) enableForwarding() error {
	const p = "/proc/sys/net/ipv4/ip_forward"
	return m.ns.Do(func() error {
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		if strings.TrimSpace(string(b)) == "1" {
			return nil
		}
		if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("enable ip_forward: %w", err)
		}
		return nil
	})
}

// createTAP creates the persistent TAP device of a lease (owned by root),
// attaches it to the bridge and brings it up. An existing TAP of that name
// is adopted (fresh is false then).
func (m *Manager) createTAP(l *Lease) (fresh bool, err error) {
	err = m.withLinks(func(h *netlink.Handle) error {
		br, err := h.LinkByName(m.cfg.Bridge)
		if err != nil {
			return fmt.Errorf("bridge %s: %w", m.cfg.Bridge, err)
		}
		link, err := h.LinkByName(l.TAP)
		switch {
		case isNotFound(err):
			la := netlink.NewLinkAttrs()
			la.Name = l.TAP
			la.MTU = br.Attrs().MTU
			tap := &netlink.Tuntap{
				LinkAttrs: la,
				Mode:      netlink.TUNTAP_MODE_TAP,
				// What QEMU's tap backend asks for when it attaches.
				Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE,
				Owner: 0,
				Group: 0,
			}
			// The tun device is created in the namespace of the thread
			// that opens /dev/net/tun: we are on it (withLinks).
			if err := h.LinkAdd(tap); err != nil {
				return fmt.Errorf("create TAP %s: %w", l.TAP, err)
			}
			if link, err = h.LinkByName(l.TAP); err != nil {
				return fmt.Errorf("TAP %s: %w", l.TAP, err)
			}
			fresh = true
		case err != nil:
			return fmt.Errorf("TAP %s: %w", l.TAP, err)
		default:
			if link.Type() != "tuntap" {
				return fmt.Errorf("TAP %s: a %s device of that name exists", l.TAP, link.Type())
			}
		}
		if link.Attrs().MasterIndex != br.Attrs().Index {
			if err := h.LinkSetMaster(link, br); err != nil {
				return fmt.Errorf("TAP %s: attach to %s: %w", l.TAP, m.cfg.Bridge, err)
			}
		}
		// Before the link is up, so the guest never has a moment on an
		// open port.
		if err := isolateTAP(h, link); err != nil {
			return err
		}
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("TAP %s: up: %w", l.TAP, err)
		}
		return nil
	})
	return fresh, err
}

// deleteLink removes a link by name; a missing link is not an error.
func (m *Manager) deleteLink(name string) error {
	return m.withLinks(func(h *netlink.Handle) error {
		link, err := h.LinkByName(name)
		if isNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := h.LinkDel(link); err != nil {
			return fmt.Errorf("delete %s: %w", name, err)
		}
		return nil
	})
}

// orphanTAPs lists TAP devices on our bridge named like ours whose name is
// not in keep.
func (m *Manager) orphanTAPs(keep map[string]bool) ([]string, error) {
	var out []string
	err := m.withLinks(func(h *netlink.Handle) error {
		taps, err := ourTAPs(h, m.cfg.Bridge)
		for _, l := range taps {
			if !keep[l.Attrs().Name] {
				out = append(out, l.Attrs().Name)
			}
		}
		return err
	})
	return out, err
}

// ourTAPs lists the TAP devices attached to bridge that are named like
// ours (none when the bridge does not exist).
func ourTAPs(h *netlink.Handle, bridge string) ([]netlink.Link, error) {
	br, err := h.LinkByName(bridge)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return links(h, func(l netlink.Link) bool {
		a := l.Attrs()
		return l.Type() == "tuntap" && a.MasterIndex == br.Attrs().Index && isTAPName(a.Name)
	})
}

// links lists the links match accepts.
func links(h *netlink.Handle, match func(netlink.Link) bool) ([]netlink.Link, error) {
	all, err := h.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, err
	}
	var out []netlink.Link
	for _, l := range all {
		if match(l) {
			out = append(out, l)
		}
	}
	return out, nil
}

// linkNames lists the names of the links match accepts.
func linkNames(h *netlink.Handle, match func(netlink.Link) bool) ([]string, error) {
	ls, err := links(h, match)
	out := make([]string, 0, len(ls))
	for _, l := range ls {
		out = append(out, l.Attrs().Name)
	}
	return out, err
}

func isTAPName(s string) bool {
	if len(s) != 10 || !strings.HasPrefix(s, "hm") {
		return false
	}
	for _, c := range s[2:] {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}
