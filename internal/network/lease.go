package network

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/hypervisor"
)

// Lease is the network identity of one instance.
type Lease struct {
	InstanceID string `json:"instance_id"`
	// Mode is bridge or user.
	Mode Mode `json:"mode"`
	// IP is the guest's IPv4 address, PrefixLen the subnet's prefix length.
	IP        string `json:"ip"`
	PrefixLen int    `json:"prefix_len"`
	Gateway   string `json:"gateway"`
	// MAC is locally administered (02:...) and stable per instance.
	MAC string `json:"mac"`
	// TAP is the host TAP device name (bridge mode only).
	TAP       string    `json:"tap,omitempty"`
	DNS       []string  `json:"dns,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// GuestConfig is the guest init's network configuration for this lease.
func (l *Lease) GuestConfig() *guestconfig.Network {
	return &guestconfig.Network{
		MAC:     l.MAC,
		Address: fmt.Sprintf("%s/%d", l.IP, l.PrefixLen),
		Gateway: l.Gateway,
		DNS:     append([]string(nil), l.DNS...),
	}
}

// NetConfig is the hypervisor NIC for this lease. In user mode the caller
// may append HostForwards.
func (l *Lease) NetConfig() *hypervisor.NetConfig {
	if l.Mode == ModeUser {
		return &hypervisor.NetConfig{MAC: l.MAC, User: true}
	}
	return &hypervisor.NetConfig{MAC: l.MAC, TAP: l.TAP}
}

func (l *Lease) clone() *Lease {
	c := *l
	c.DNS = append([]string(nil), l.DNS...)
	return &c
}

// MACFor returns the locally administered unicast MAC derived from an
// instance ID (02 followed by 5 bytes of SHA-256). salt 0 is the normal MAC;
// other salts are used only to step around a collision with another lease.
func MACFor(instanceID string, salt int) string {
	h := sha256.New()
	h.Write([]byte("hypeman-mac\x00"))
	h.Write([]byte(instanceID))
	if salt != 0 {
		fmt.Fprintf(h, "\x00%d", salt)
	}
	s := h.Sum(nil)
	return net.HardwareAddr{0x02, s[0], s[1], s[2], s[3], s[4]}.String()
}

// TAPName returns the TAP device name of a leased IPv4 address: "hm" and the
// address in hex (10 bytes; IFNAMSIZ allows 15). Unique among live leases
// because their IPs are.
func TAPName(ip netip.Addr) string {
	b := ip.As4()
	return fmt.Sprintf("hm%08x", binary.BigEndian.Uint32(b[:]))
}

// ErrExhausted is returned by Allocate when every address is leased.
var ErrExhausted = errors.New("no free IP address in subnet")

// pool is the address arithmetic of an IPv4 subnet: the network and
// broadcast addresses and the gateway (first host) are never leased.
type pool struct {
	prefix  netip.Prefix
	gateway netip.Addr
	first   netip.Addr // first leasable
	last    netip.Addr // last leasable
}

func newPool(subnet string) (pool, error) {
	p, err := netip.ParsePrefix(subnet)
	if err != nil {
		return pool{}, fmt.Errorf("%w: subnet %q: %v", ErrInvalidConfig, subnet, err)
	}
	if !p.Addr().Is4() {
		return pool{}, fmt.Errorf("%w: subnet %q is not IPv4", ErrInvalidConfig, subnet)
	}
	if p.Bits() < 8 || p.Bits() > 30 {
		return pool{}, fmt.Errorf("%w: subnet %q: prefix length must be 8..30", ErrInvalidConfig, subnet)
	}
	if p.Masked() != p {
		return pool{}, fmt.Errorf("%w: subnet %q has host bits set (did you mean %s?)", ErrInvalidConfig, subnet, p.Masked())
	}
	network := p.Addr()
	bcast := u32addr(addrU32(network) | (1<<(32-p.Bits()) - 1))
	gw := network.Next()
	return pool{prefix: p, gateway: gw, first: gw.Next(), last: bcast.Prev()}, nil
}

// size is the number of leasable addresses.
func (p pool) size() int { return int(addrU32(p.last)-addrU32(p.first)) + 1 }

// leasable reports whether a may be handed to a guest.
func (p pool) leasable(a netip.Addr) bool {
	return a.Is4() && addrU32(a) >= addrU32(p.first) && addrU32(a) <= addrU32(p.last)
}

// after returns the leasable address following a, wrapping around.
func (p pool) after(a netip.Addr) netip.Addr {
	n := a.Next()
	if !p.leasable(n) {
		return p.first
	}
	return n
}

func addrU32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func u32addr(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}
