package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
)

// NFTTable is the nftables table (family inet) that holds all our rules:
// outbound NAT and the filters that keep guests away from the host and from
// each other.
const NFTTable = "hypeman"

// firewall is what Setup installs in the namespace that holds the bridge.
// It is a value so the ruleset can be rendered (and tested) without nft.
type firewall struct {
	bridge string
	subnet netip.Prefix
	// dns are the resolvers handed to guests: when one of them is an address
	// of this host (a resolver on the bridge, say), guests must reach its
	// port 53 even though everything else on the host is closed to them.
	dns []netip.Addr
	// published are the host ports ingress listens on where guests can reach
	// them (empty when ingress listens on loopback or in another namespace).
	published published
}

// published is a host address (invalid = every address) and TCP ports on it.
type published struct {
	addr  netip.Addr
	ports []int
}

func (p published) equal(o published) bool {
	return p.addr == o.addr && slices.Equal(p.ports, o.ports)
}

// nftRuleset renders the firewall as one `nft -f` transaction. Declaring
// each table before deleting it makes the delete succeed when it did not
// exist, so applying the result any number of times leaves exactly this
// table. It also deletes "ip hypeman", the NAT-only table of earlier
// versions.
//
// Guests are cut off from the host (input from the bridge) except for
// replies to connections the host opened (health checks, the ingress
// proxy), their DNS servers and published ingress ports; and from each other
// when traffic is routed back out of the bridge through the gateway (the
// direct layer-2 path is closed by bridge port isolation, see isolateTAP).
// Guests are IPv4-only: IPv6 from the bridge (link-local addresses exist
// anyway) is dropped. A source address outside the subnet is a spoof.
func (f firewall) nftRuleset() string {
	var b strings.Builder
	br := strconv.Quote(f.bridge)
	b.WriteString(nftRemove())
	fmt.Fprintf(&b, "table inet %s {\n", NFTTable)
	fmt.Fprintf(&b, "\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tiifname %s jump guest_to_host\n\t}\n", br)
	b.WriteString("\tchain guest_to_host {\n")
	b.WriteString("\t\tct state established,related accept\n")
	b.WriteString("\t\tmeta nfproto ipv6 counter drop\n")
	if len(f.dns) > 0 {
		fmt.Fprintf(&b, "\t\tip daddr { %s } meta l4proto { tcp, udp } th dport 53 accept\n", joinAddrs(f.dns))
	}
	if len(f.published.ports) > 0 {
		b.WriteString("\t\t")
		if f.published.addr.IsValid() {
			fmt.Fprintf(&b, "ip daddr %s ", f.published.addr)
		}
		fmt.Fprintf(&b, "tcp dport { %s } accept\n", joinInts(f.published.ports))
	}
	b.WriteString("\t\tcounter drop\n\t}\n")
	fmt.Fprintf(&b, "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tiifname %s jump guest_forward\n\t}\n", br)
	b.WriteString("\tchain guest_forward {\n")
	// With br_netfilter loaded, frames bridged between two ports also pass
	// here with the bridge as input and output: this rule then backs up
	// port isolation.
	fmt.Fprintf(&b, "\t\toifname %s counter drop\n", br)
	b.WriteString("\t\tmeta nfproto ipv6 counter drop\n")
	fmt.Fprintf(&b, "\t\tip saddr != %s counter drop\n", f.subnet)
	b.WriteString("\t}\n")
	fmt.Fprintf(&b, "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr %[1]s ip daddr != %[1]s masquerade\n\t}\n", f.subnet)
	b.WriteString("}\n")
	return b.String()
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

// nftRemove deletes our tables (and succeeds when they are absent).
func nftRemove() string {
	return fmt.Sprintf("table inet %[1]s\ndelete table inet %[1]s\ntable ip %[1]s\ndelete table ip %[1]s\n", NFTTable)
}

// nft applies a ruleset inside the namespace.
func (m *Manager) nft(ctx context.Context, ruleset string) error {
	bin, err := exec.LookPath("nft")
	if err != nil {
		return fmt.Errorf("nft: %w", err)
	}
	return m.runInNS(ctx, "nft", ruleset, bin, "-f", "-")
}

// runInNS runs bin with args inside the namespace, stdin as its input; a
// failure carries the tool's output. The child is forked from a thread in
// the namespace, so it inherits it.
func (m *Manager) runInNS(ctx context.Context, tool, stdin, bin string, args ...string) error {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := m.ns.Do(cmd.Start); err != nil {
		return fmt.Errorf("%s: %w", tool, err)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%s: %w: %s", tool, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// firewallLocked is the firewall for the current settings; setupMu is held.
func (m *Manager) firewallLocked() firewall {
	f := firewall{bridge: m.cfg.Bridge, subnet: m.pool.prefix, published: m.published}
	for _, s := range m.dns {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
			f.dns = append(f.dns, a)
		}
	}
	return f
}

// PublishPorts tells the firewall where ingress listens, so guests may reach
// those TCP ports on the host like any other client (the rest of the host
// stays closed to them). listen is ingress's address in the manager's
// namespace ("" or 0.0.0.0 = all); each call replaces the previous set.
// Nothing is opened when ingress listens on loopback, which guests cannot
// reach anyway. Call it only when ingress listens in the namespace that
// holds the bridge (not when Config.NetNS moves the bridge elsewhere). A
// no-op outside bridge mode and without nft.
func (m *Manager) PublishPorts(ctx context.Context, listen string, ports []int) error {
	if m.Mode() != ModeBridge {
		return nil
	}
	p, err := publishedFor(listen, ports)
	if err != nil {
		return err
	}
	m.setupMu.Lock()
	defer m.setupMu.Unlock()
	if p.equal(m.published) {
		return nil
	}
	if _, err := exec.LookPath("nft"); err != nil {
		m.published = p
		return nil
	}
	f := m.firewallLocked()
	f.published = p
	if err := m.nft(ctx, f.nftRuleset()); err != nil {
		return err
	}
	m.published = p
	m.log.Info("guest access to published ingress ports", "address", p.addr, "ports", p.ports)
	return nil
}

// publishedFor is what guests may reach of ingress listening on listen with
// ports.
func publishedFor(listen string, ports []int) (published, error) {
	var p published
	a, err := netip.ParseAddr(listen)
	switch {
	case listen == "":
	case err != nil:
		return p, fmt.Errorf("%w: ingress listen address %q is not an IP address", ErrInvalidConfig, listen)
	case a.IsLoopback() || (!a.Unmap().Is4() && !a.IsUnspecified()):
		return p, nil // unreachable from guests (which are IPv4-only)
	case !a.IsUnspecified():
		p.addr = a.Unmap()
	}
	if len(ports) == 0 {
		return published{}, nil
	}
	p.ports = slices.Clone(ports)
	slices.Sort(p.ports)
	p.ports = slices.Compact(p.ports)
	return p, nil
}

// isolateTAP turns on bridge port isolation for a TAP attached to the
// bridge: frames between two isolated ports are dropped by the bridge
// itself (guest A never sees guest B's ARP or traffic), while traffic
// between a guest and the bridge's own address (the gateway) flows.
func isolateTAP(h *netlink.Handle, link netlink.Link) error {
	if err := h.LinkSetIsolated(link, true); err != nil {
		return fmt.Errorf("TAP %s: bridge port isolation: %w", link.Attrs().Name, err)
	}
	return nil
}

// isolateAllTAPs isolates every TAP named like ours on the bridge. Setup
// calls it, so TAPs of VMs that survived a daemon restart (or were made by
// an older version) are isolated as well as the ones CreateTAP makes.
func (m *Manager) isolateAllTAPs() error {
	return m.withLinks(func(h *netlink.Handle) error {
		taps, err := ourTAPs(h, m.cfg.Bridge)
		if err != nil {
			return err
		}
		var errs []error
		for _, l := range taps {
			errs = append(errs, isolateTAP(h, l))
		}
		return errors.Join(errs...)
	})
}
