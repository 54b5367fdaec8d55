// Package guestnet configures the guest's network interface from the host's
// guestconfig.Network: it finds the NIC, gives it its MAC, address and
// default route, and announces the address with a gratuitous ARP.
//
// Why it is shaped this way:
//
//   - It talks rtnetlink itself (rtnl.go, on x/sys/unix) instead of running
//     `ip`: the initramfs has no iproute2 and the init must not depend on the
//     image having one. Measured on the static init (go build -trimpath):
//     this feature with vishvananda/netlink added 580 KB (+12%), with the
//     handful of hand-encoded requests in rtnl.go 200 KB (+4%).
//   - One function, Configure, serves both the boot-time setup and the
//     agent's re-addressing of a restored fork. A fork wakes up with its
//     source's MAC (QEMU migrates the virtio-net state; the argv's mac= does
//     not apply), so Configure changes the MAC itself, with the link down as
//     the kernel requires for most drivers.
//   - The NIC is found by MAC, then by the name the caller configured last
//     (a fork's NIC still carries the source's MAC), then as the first
//     non-loopback Ethernet link: no renaming and no reliance on probe order.
//   - The configuration is parsed and validated before anything is touched,
//     so a bad request (ErrInvalid) leaves the guest's network as it was.
//   - Old addresses are removed before the new one is added: with the
//     kernel's default promote_secondaries=0, deleting an old primary address
//     would also delete a new secondary address in the same subnet.
//   - It runs in the calling thread's network namespace and uses a netlink
//     socket of its own per call, so tests can run it inside a throwaway
//     namespace (on a locked thread) exactly as the guest runs it.
package guestnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"hypeman/internal/guest/guestconfig"
)

// ErrInvalid is returned (wrapped) for a configuration that cannot be
// applied as given: bad MAC, address or gateway.
var ErrInvalid = errors.New("invalid network configuration")

// ErrNoLink is returned (wrapped) when no network interface fits.
var ErrNoLink = errors.New("no network interface")

// Plan is a parsed and validated guestconfig.Network.
type Plan struct {
	MAC     net.HardwareAddr // nil: keep the link's MAC
	Addr    netip.Prefix     // the address with its prefix length
	Gateway netip.Addr       // invalid (zero): no default route
}

// ParsePlan validates n. The MAC is optional (empty: keep the NIC's), the
// address is required, the gateway optional; an IPv4 address needs an IPv4
// gateway and vice versa.
func ParsePlan(n guestconfig.Network) (Plan, error) {
	var p Plan
	if n.MAC != "" {
		mac, err := net.ParseMAC(n.MAC)
		if err != nil || len(mac) != 6 {
			return Plan{}, fmt.Errorf("%w: MAC %q is not an Ethernet address", ErrInvalid, n.MAC)
		}
		if mac[0]&1 != 0 {
			return Plan{}, fmt.Errorf("%w: MAC %q is a multicast address", ErrInvalid, n.MAC)
		}
		p.MAC = mac
	}
	pfx, err := netip.ParsePrefix(n.Address)
	if err != nil {
		return Plan{}, fmt.Errorf("%w: address %q must be in CIDR form (e.g. 10.100.0.5/16)", ErrInvalid, n.Address)
	}
	a := pfx.Addr()
	if a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
		return Plan{}, fmt.Errorf("%w: address %q cannot be a host address", ErrInvalid, n.Address)
	}
	if a.Is4In6() {
		pfx = netip.PrefixFrom(a.Unmap(), pfx.Bits()-96)
	}
	p.Addr = pfx
	if n.Gateway != "" {
		gw, err := netip.ParseAddr(n.Gateway)
		if err != nil {
			return Plan{}, fmt.Errorf("%w: gateway %q: %v", ErrInvalid, n.Gateway, err)
		}
		gw = gw.Unmap()
		if gw.Is4() != p.Addr.Addr().Is4() {
			return Plan{}, fmt.Errorf("%w: gateway %s and address %s are of different IP families", ErrInvalid, gw, p.Addr)
		}
		if gw == p.Addr.Addr() || gw.IsUnspecified() || gw.IsMulticast() {
			return Plan{}, fmt.Errorf("%w: gateway %s cannot be used", ErrInvalid, gw)
		}
		p.Gateway = gw
	}
	return p, nil
}

// Options tune Configure.
type Options struct {
	// Prefer names the link to use when none has the wanted MAC (the link
	// configured last time: after a fork it still has the source's MAC).
	Prefer string
	// LinkWait bounds the wait for a network interface to appear (at boot
	// the NIC registers while its driver module loads). Zero: no wait.
	LinkWait time.Duration
	// NoAnnounce skips the gratuitous ARP.
	NoAnnounce bool
	// Reannounce, when positive, sends a second gratuitous ARP that long
	// after the first, in the background (the announcement is sent right
	// after the link is up: waiting for the kernel to report the link as
	// running would cost up to a second, as link state events are rate
	// limited; the repeat covers a first one the link dropped).
	Reannounce time.Duration
}

// Result says what Configure did.
type Result struct {
	Link       string // interface name
	Index      int
	MAC        string // the link's MAC afterwards
	MACChanged bool
	// Removed lists the addresses that were taken off the link.
	Removed []netip.Prefix
	// AnnounceErr is set when the gratuitous ARP could not be sent (the
	// configuration itself succeeded).
	AnnounceErr error
}

// loopbackIndex is the loopback interface's index in every network
// namespace (LOOPBACK_IFINDEX in the kernel).
const loopbackIndex = 1

// LoopbackUp sets the loopback interface up (the kernel gives it 127.0.0.1
// and ::1 once it is up). It addresses lo by its fixed index: a lookup by
// name costs a round trip that is slow under TCG.
func LoopbackUp() error {
	r, err := openRTNL()
	if err != nil {
		return err
	}
	defer r.close()
	if err := r.setUp(loopbackIndex, true); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

// Configure applies n to the guest's NIC: if the MAC differs it takes the
// link down and sets it; it removes every other address (IPv6 link-local
// ones excepted), adds n's address, sets the link up, replaces the default
// route (on-link when the gateway is outside the subnet) and sends a
// gratuitous ARP for an IPv4 address. It is idempotent.
func Configure(ctx context.Context, n guestconfig.Network, opts Options) (Result, error) {
	plan, err := ParsePlan(n)
	if err != nil {
		return Result{}, err
	}
	r, err := openRTNL()
	if err != nil {
		return Result{}, err
	}
	defer r.close()

	link, err := waitForLink(ctx, r, plan.MAC, opts.Prefer, opts.LinkWait)
	if err != nil {
		return Result{}, err
	}
	res := Result{Link: link.Name, Index: link.Index, MAC: link.MAC.String()}
	fail := func(step string, err error) (Result, error) {
		return res, fmt.Errorf("%s: %s: %w", link.Name, step, err)
	}

	if plan.MAC != nil && link.MAC.String() != plan.MAC.String() {
		if err := r.setUp(link.Index, false); err != nil {
			return fail("set link down", err)
		}
		if err := r.setMAC(link.Index, plan.MAC); err != nil {
			return fail("set MAC "+plan.MAC.String(), err)
		}
		res.MAC, res.MACChanged = plan.MAC.String(), true
	}

	addrs, err := r.addrs(link.Index)
	if err != nil {
		return fail("list addresses", err)
	}
	have := false
	for _, p := range addrs {
		if p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if p == plan.Addr {
			have = true
			continue
		}
		if err := r.delAddr(link.Index, p); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fail("remove address "+p.String(), err)
		}
		res.Removed = append(res.Removed, p)
	}
	if !have {
		if err := r.replaceAddr(link.Index, plan.Addr); err != nil {
			return fail("add address "+plan.Addr.String(), err)
		}
	}
	if err := r.setUp(link.Index, true); err != nil {
		return fail("set link up", err)
	}
	if plan.Gateway.IsValid() {
		onlink := !plan.Addr.Masked().Contains(plan.Gateway)
		if err := r.replaceDefaultRoute(link.Index, plan.Gateway, onlink); err != nil {
			return fail("default route via "+plan.Gateway.String(), err)
		}
	}
	if plan.Addr.Addr().Is4() && !opts.NoAnnounce {
		mac, _ := net.ParseMAC(res.MAC)
		res.AnnounceErr = announce(link.Index, mac, plan.Addr.Addr(), opts.Reannounce)
	}
	return res, nil
}

// PickLink chooses the NIC among links: the one with mac, else the one
// named prefer, else the first (lowest index) Ethernet link.
func PickLink(links []Link, mac net.HardwareAddr, prefer string) (Link, bool) {
	var byName, first *Link
	for i := range links {
		l := &links[i]
		if !l.Ethernet || len(l.MAC) != 6 {
			continue
		}
		if mac != nil && l.MAC.String() == mac.String() {
			return *l, true
		}
		if prefer != "" && l.Name == prefer {
			byName = l
		}
		if first == nil || l.Index < first.Index {
			first = l
		}
	}
	switch {
	case byName != nil:
		return *byName, true
	case first != nil:
		return *first, true
	}
	return Link{}, false
}

func waitForLink(ctx context.Context, r *rtnl, mac net.HardwareAddr, prefer string, wait time.Duration) (Link, error) {
	deadline := time.Now().Add(wait)
	for {
		links, err := r.links()
		if err != nil {
			return Link{}, err
		}
		if l, ok := PickLink(links, mac, prefer); ok {
			return l, nil
		}
		if !time.Now().Before(deadline) {
			want := "any Ethernet interface"
			if mac != nil {
				want = "an interface with MAC " + mac.String() + " or any Ethernet interface"
			}
			return Link{}, fmt.Errorf("%w: found no %s", ErrNoLink, want)
		}
		select {
		case <-ctx.Done():
			return Link{}, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// ARPAnnouncement builds an ARP announcement (RFC 5227): an ARP request
// whose sender and target protocol addresses are both ip, target hardware
// address zero. Neighbours that know ip update their entry to mac.
func ARPAnnouncement(mac net.HardwareAddr, ip netip.Addr) []byte {
	p := make([]byte, 28)
	p[0], p[1] = 0, 1 // hardware type Ethernet
	p[2], p[3] = 0x08, 0x00
	p[4], p[5] = 6, 4
	p[6], p[7] = 0, 1 // request
	copy(p[8:14], mac)
	a := ip.As4()
	copy(p[14:18], a[:])
	copy(p[24:28], a[:])
	return p
}

// arpSocket is a packet socket that broadcasts ARP frames on one link. The
// socket is opened in the caller's network namespace and stays in it, even
// when used from another thread.
type arpSocket struct {
	fd int
	to *unix.SockaddrLinklayer
}

func openARPSocket(ifindex int) (*arpSocket, error) {
	const ethPArp = 0x0806
	proto := uint16(ethPArp>>8 | (ethPArp&0xff)<<8) // network byte order
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return nil, fmt.Errorf("gratuitous ARP: socket: %w", err)
	}
	return &arpSocket{fd: fd, to: &unix.SockaddrLinklayer{
		Protocol: proto,
		Ifindex:  ifindex,
		Halen:    6,
		Addr:     [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	}}, nil
}

func (s *arpSocket) send(frame []byte) error {
	if err := unix.Sendto(s.fd, frame, 0, s.to); err != nil {
		return fmt.Errorf("gratuitous ARP: send: %w", err)
	}
	return nil
}

func (s *arpSocket) close() { unix.Close(s.fd) }

// AnnounceIPv4 broadcasts an ARP announcement for ip from the link with
// index ifindex.
func AnnounceIPv4(ifindex int, mac net.HardwareAddr, ip netip.Addr) error {
	return announce(ifindex, mac, ip, 0)
}

// announce sends an announcement now and, when again > 0, a second one
// that much later from a goroutine (RFC 5227 repeats announcements; the
// first can be lost while a freshly started link's queue is not yet
// active or the switch port is still learning).
func announce(ifindex int, mac net.HardwareAddr, ip netip.Addr, again time.Duration) error {
	if !ip.Is4() || len(mac) != 6 {
		return fmt.Errorf("%w: ARP announcement needs an IPv4 address and an Ethernet MAC", ErrInvalid)
	}
	s, err := openARPSocket(ifindex)
	if err != nil {
		return err
	}
	frame := ARPAnnouncement(mac, ip)
	if err := s.send(frame); err != nil || again <= 0 {
		s.close()
		return err
	}
	go func() {
		defer s.close()
		time.Sleep(again)
		_ = s.send(frame)
	}()
	return nil
}
