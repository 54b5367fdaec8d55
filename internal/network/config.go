package network

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// Mode is the networking mode of the daemon.
type Mode string

const (
	// ModeAuto picks bridge when possible, else user.
	ModeAuto Mode = "auto"
	// ModeBridge gives every VM a TAP device on a host bridge, with its own
	// IP reachable from the host, and NAT for outbound traffic.
	ModeBridge Mode = "bridge"
	// ModeUser uses QEMU user-mode networking (slirp): no root needed, the
	// guest is reachable from the host only through port forwards.
	ModeUser Mode = "user"
	// ModeNone gives VMs no network device.
	ModeNone Mode = "none"
)

// Defaults.
const (
	DefaultBridge = "vmbr0"
	DefaultSubnet = "10.100.0.0/16"
)

// Slirp's fixed addresses (QEMU user-mode networking defaults).
const (
	UserGuestIP   = "10.0.2.15"
	UserPrefixLen = 24
	UserGateway   = "10.0.2.2"
	UserDNS       = "10.0.2.3"
)

// Config configures a Manager. The zero value of every field but StateDir
// means "default".
type Config struct {
	// Mode is auto (default), bridge, user or none.
	Mode Mode
	// Bridge is the host bridge name (default vmbr0).
	Bridge string
	// Subnet is the IPv4 subnet of the bridge (default 10.100.0.0/16). The
	// first host address is the gateway (the bridge's own address).
	Subnet string
	// DNS servers handed to guests in bridge mode. Empty means the host's
	// resolvers: the IPv4, non-loopback nameservers of /etc/resolv.conf (or
	// of systemd-resolved's upstream list when /etc/resolv.conf only names
	// the local stub). There is no DNS server on the gateway, and no public
	// resolver is ever chosen silently: with none found, guests get no DNS
	// and Capability.Reason says so.
	DNS []string
	// NetNS, when set, is a network namespace (a name under /run/netns, or
	// an absolute path such as /proc/PID/ns/net) in which the bridge, the
	// TAP devices, the NAT rules and the ip_forward sysctl live. VMMs must
	// then be started in it (InNetNS or WrapCommand) and connections to
	// guests dialed in it (DialContext).
	NetNS string
	// StateDir holds leases.json. Required unless Mode is none or user.
	StateDir string
}

// ErrInvalidConfig is wrapped by configuration errors.
var ErrInvalidConfig = errors.New("invalid network config")

// withDefaults fills defaults and validates.
func (c Config) withDefaults() (Config, error) {
	if c.Mode == "" {
		c.Mode = ModeAuto
	}
	switch c.Mode {
	case ModeAuto, ModeBridge, ModeUser, ModeNone:
	default:
		return c, fmt.Errorf("%w: mode %q (want auto, bridge, user or none)", ErrInvalidConfig, c.Mode)
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if len(c.Bridge) > 15 || strings.ContainsAny(c.Bridge, "/ \t\n:\"'\\") {
		return c, fmt.Errorf("%w: bridge name %q (at most 15 bytes, no spaces, quotes, '/', '\\' or ':')", ErrInvalidConfig, c.Bridge)
	}
	if c.Subnet == "" {
		c.Subnet = DefaultSubnet
	}
	for _, d := range c.DNS {
		if a, err := netip.ParseAddr(d); err != nil || !a.Is4() {
			return c, fmt.Errorf("%w: DNS server %q is not an IPv4 address", ErrInvalidConfig, d)
		}
	}
	if (c.Mode == ModeAuto || c.Mode == ModeBridge) && c.StateDir == "" {
		return c, fmt.Errorf("%w: state dir is required for bridge networking", ErrInvalidConfig)
	}
	return c, nil
}

// defaultResolvConfs are the files consulted for the host's DNS servers, in
// order.
func defaultResolvConfs() []string {
	return []string{"/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"}
}

// hostResolvers returns the usable nameservers of the first file in paths
// that has any: IPv4 (guests are IPv4-only), not loopback (a stub resolver
// on the host's 127.0.0.x is unreachable from a guest), deduplicated.
func hostResolvers(paths []string) []string {
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if out := parseResolvConf(b); len(out) > 0 {
			return out
		}
	}
	return nil
}

func parseResolvConf(b []byte) []string {
	var out []string
	seen := map[netip.Addr]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil || !a.Is4() || a.IsLoopback() || a.IsUnspecified() || seen[a] {
			continue
		}
		seen[a] = true
		out = append(out, a.String())
	}
	return out
}
