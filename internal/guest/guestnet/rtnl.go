package guestnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// rtnl is a minimal rtnetlink client: exactly the requests the guest needs,
// encoded by hand on x/sys/unix. A general netlink library parses every link
// kind and route attribute the kernel knows, and the static init pays for
// all of it (~380 KB more than this).
type rtnl struct {
	fd  int
	seq uint32
	buf []byte
}

// errDumpInterrupted is a dump the kernel marked inconsistent (the objects
// changed meanwhile); the caller retries.
var errDumpInterrupted = errors.New("netlink dump interrupted")

// openRTNL opens a NETLINK_ROUTE socket in the calling thread's network
// namespace.
func openRTNL() (*rtnl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	return &rtnl{fd: fd, buf: make([]byte, 64<<10)}, nil
}

func (r *rtnl) close() { unix.Close(r.fd) }

// send writes one request and returns its sequence number.
func (r *rtnl) send(typ, flags uint16, body []byte) (uint32, error) {
	r.seq++
	msg := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	binary.NativeEndian.PutUint32(msg[0:4], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(msg[4:6], typ)
	binary.NativeEndian.PutUint16(msg[6:8], flags|unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(msg[8:12], r.seq)
	msg = append(msg, body...)
	if err := unix.Sendto(r.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("netlink send: %w", err)
	}
	return r.seq, nil
}

// receive reads replies to seq until fn says stop, an error reply arrives
// or the dump ends (NLMSG_DONE).
func (r *rtnl) receive(seq uint32, fn func(m *nlmsg) (done bool)) error {
	interrupted := false
	for {
		n, _, err := unix.Recvfrom(r.fd, r.buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := parseMessages(r.buf[:n])
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		for i := range msgs {
			m := &msgs[i]
			if m.seq != seq {
				continue
			}
			if m.flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch m.typ {
			case unix.NLMSG_DONE:
				if interrupted {
					return errDumpInterrupted
				}
				return nil
			case unix.NLMSG_ERROR:
				if len(m.data) < 4 {
					return errors.New("netlink: short error message")
				}
				if e := int32(binary.NativeEndian.Uint32(m.data[0:4])); e != 0 {
					return unix.Errno(-e)
				}
				return nil // the ack
			}
			if fn != nil && fn(m) {
				return nil
			}
		}
	}
}

// do sends a request and waits for its acknowledgement.
func (r *rtnl) do(typ, flags uint16, body []byte) error {
	seq, err := r.send(typ, flags|unix.NLM_F_ACK, body)
	if err != nil {
		return err
	}
	return r.receive(seq, nil)
}

// dump runs a dump request, calling fn for each object, retrying a dump the
// kernel interrupted.
func (r *rtnl) dump(typ uint16, body []byte, fn func(m *nlmsg)) error {
	var err error
	for range 5 {
		var seq uint32
		if seq, err = r.send(typ, unix.NLM_F_DUMP, body); err != nil {
			return err
		}
		var got []nlmsg
		err = r.receive(seq, func(m *nlmsg) bool {
			got = append(got, nlmsg{typ: m.typ, flags: m.flags, seq: m.seq, data: append([]byte(nil), m.data...)})
			return false
		})
		if err == nil {
			for i := range got {
				fn(&got[i])
			}
			return nil
		}
		if !errors.Is(err, errDumpInterrupted) {
			return err
		}
	}
	return err
}

// nlmsg is one received netlink message.
type nlmsg struct {
	typ, flags uint16
	seq        uint32
	data       []byte // after the header
}

// parseMessages splits a datagram into messages.
func parseMessages(b []byte) ([]nlmsg, error) {
	var out []nlmsg
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return nil, fmt.Errorf("bad message length %d", l)
		}
		out = append(out, nlmsg{
			typ:   binary.NativeEndian.Uint16(b[4:6]),
			flags: binary.NativeEndian.Uint16(b[6:8]),
			seq:   binary.NativeEndian.Uint32(b[8:12]),
			data:  b[unix.NLMSG_HDRLEN:l],
		})
		b = b[min(nlAlign(l), len(b)):]
	}
	return out, nil
}

func nlAlign(l int) int { return (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// attr is one route attribute.
type attr struct {
	typ   uint16
	value []byte
}

// parseAttrs splits route attributes; a malformed tail is ignored.
func parseAttrs(b []byte) []attr {
	var out []attr
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < unix.SizeofRtAttr || l > len(b) {
			break
		}
		out = append(out, attr{typ: binary.NativeEndian.Uint16(b[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER), value: b[unix.SizeofRtAttr:l]})
		b = b[min((l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1), len(b)):]
	}
	return out
}

// rtattr encodes one route attribute, padded to 4 bytes.
func rtattr(typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	b := make([]byte, (l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1))
	binary.NativeEndian.PutUint16(b[0:2], uint16(l))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	copy(b[unix.SizeofRtAttr:], data)
	return b
}

func u32bytes(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}

// ifinfomsg encodes struct ifinfomsg.
func ifinfomsg(index int, flags, change uint32) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(b[4:8], uint32(index))
	binary.NativeEndian.PutUint32(b[8:12], flags)
	binary.NativeEndian.PutUint32(b[12:16], change)
	return b
}

// Link is a network interface as Configure sees it.
type Link struct {
	Index    int
	Name     string
	MAC      net.HardwareAddr
	Ethernet bool // ARPHRD_ETHER (not loopback, tunnels, ...)
	Up       bool
}

func (r *rtnl) links() ([]Link, error) {
	var links []Link
	err := r.dump(unix.RTM_GETLINK, ifinfomsg(0, 0, 0), func(m *nlmsg) {
		if m.typ != unix.RTM_NEWLINK || len(m.data) < unix.SizeofIfInfomsg {
			return
		}
		l := Link{
			Index:    int(int32(binary.NativeEndian.Uint32(m.data[4:8]))),
			Ethernet: binary.NativeEndian.Uint16(m.data[2:4]) == unix.ARPHRD_ETHER,
			Up:       binary.NativeEndian.Uint32(m.data[8:12])&unix.IFF_UP != 0,
		}
		for _, a := range parseAttrs(m.data[unix.SizeofIfInfomsg:]) {
			switch a.typ {
			case unix.IFLA_IFNAME:
				l.Name = string(trimNUL(a.value))
			case unix.IFLA_ADDRESS:
				l.MAC = append(net.HardwareAddr(nil), a.value...)
			}
		}
		links = append(links, l)
	})
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	return links, nil
}

func trimNUL(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}

func (r *rtnl) setUp(index int, up bool) error {
	var flags uint32
	if up {
		flags = unix.IFF_UP
	}
	return r.do(unix.RTM_NEWLINK, 0, ifinfomsg(index, flags, unix.IFF_UP))
}

func (r *rtnl) setMAC(index int, mac net.HardwareAddr) error {
	body := append(ifinfomsg(index, 0, 0), rtattr(unix.IFLA_ADDRESS, mac)...)
	return r.do(unix.RTM_NEWLINK, 0, body)
}

// ifaddrmsg encodes struct ifaddrmsg.
func ifaddrmsg(p netip.Prefix, index int) []byte {
	b := make([]byte, unix.SizeofIfAddrmsg)
	b[0] = unix.AF_INET
	if p.Addr().Is6() {
		b[0] = unix.AF_INET6
	}
	b[1] = byte(p.Bits())
	binary.NativeEndian.PutUint32(b[4:8], uint32(index))
	return b
}

// addrs lists the addresses of the link with index.
func (r *rtnl) addrs(index int) ([]netip.Prefix, error) {
	var out []netip.Prefix
	body := make([]byte, unix.SizeofIfAddrmsg) // AF_UNSPEC: every family
	err := r.dump(unix.RTM_GETADDR, body, func(m *nlmsg) {
		if m.typ != unix.RTM_NEWADDR || len(m.data) < unix.SizeofIfAddrmsg {
			return
		}
		if int(binary.NativeEndian.Uint32(m.data[4:8])) != index {
			return
		}
		bits := int(m.data[1])
		// IFA_LOCAL is the local address (IPv4); IFA_ADDRESS is the peer
		// on point-to-point links and the address otherwise.
		var local, address []byte
		for _, a := range parseAttrs(m.data[unix.SizeofIfAddrmsg:]) {
			switch a.typ {
			case unix.IFA_LOCAL:
				local = a.value
			case unix.IFA_ADDRESS:
				address = a.value
			}
		}
		if local == nil {
			local = address
		}
		if a, ok := netip.AddrFromSlice(local); ok {
			out = append(out, netip.PrefixFrom(a, bits))
		}
	})
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	return out, nil
}

func addrAttrs(p netip.Prefix) []byte {
	a := p.Addr().AsSlice()
	b := append(rtattr(unix.IFA_LOCAL, a), rtattr(unix.IFA_ADDRESS, a)...)
	if p.Addr().Is4() && p.Bits() < 31 {
		v := binary.BigEndian.Uint32(a) | (1<<(32-p.Bits()) - 1)
		bcast := make([]byte, 4)
		binary.BigEndian.PutUint32(bcast, v)
		b = append(b, rtattr(unix.IFA_BROADCAST, bcast)...)
	}
	return b
}

func (r *rtnl) delAddr(index int, p netip.Prefix) error {
	body := append(ifaddrmsg(p, index), rtattr(unix.IFA_LOCAL, p.Addr().AsSlice())...)
	return r.do(unix.RTM_DELADDR, 0, body)
}

func (r *rtnl) replaceAddr(index int, p netip.Prefix) error {
	body := append(ifaddrmsg(p, index), addrAttrs(p)...)
	return r.do(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, body)
}

// replaceDefaultRoute sets the main table's default route of gw's family
// to gw via the link.
func (r *rtnl) replaceDefaultRoute(index int, gw netip.Addr, onlink bool) error {
	b := make([]byte, unix.SizeofRtMsg)
	b[0] = unix.AF_INET
	if gw.Is6() {
		b[0] = unix.AF_INET6
	}
	b[4] = unix.RT_TABLE_MAIN
	b[5] = unix.RTPROT_BOOT
	b[6] = unix.RT_SCOPE_UNIVERSE
	b[7] = unix.RTN_UNICAST
	if onlink {
		binary.NativeEndian.PutUint32(b[8:12], unix.RTNH_F_ONLINK)
	}
	b = append(b, rtattr(unix.RTA_GATEWAY, gw.AsSlice())...)
	b = append(b, rtattr(unix.RTA_OIF, u32bytes(uint32(index)))...)
	return r.do(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, b)
}
