package main

import (
	"fmt"
	"strings"

	"hypeman/internal/config"
	"hypeman/internal/network"
)

// networkNotice says, before the daemon touches anything, what bridge
// networking will change on this host and how to run without it. It is
// empty when nothing in the host's network namespace changes: networking
// off, user-mode, a network namespace, or auto without the privileges for
// a bridge (bridgeUnavailable returns why; then auto falls back to
// user-mode networking).
func networkNotice(cfg *config.Config, bridgeUnavailable func() string) string {
	switch cfg.NetworkMode {
	case "bridge":
	case "auto":
		if bridgeUnavailable() != "" {
			return ""
		}
	default: // none, user
		return ""
	}
	if cfg.NetworkNetNS != "" {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "hypemand: network_mode %s: guest networking changes this host's network:\n", cfg.NetworkMode)
	fmt.Fprintf(&b, "  - creates bridge %s for %s (one TAP device per VM)\n", cfg.NetworkBridge, cfg.NetworkSubnet)
	b.WriteString("  - enables IPv4 forwarding (net.ipv4.ip_forward=1)\n")
	fmt.Fprintf(&b, "  - adds NAT rules (nftables table ip %s: masquerade for %s)\n", network.NFTTable, cfg.NetworkSubnet)
	b.WriteString("To leave the host network alone:\n")
	b.WriteString("  HYPEMAN_NETWORK_MODE=none    VMs without a network (or --network-mode none)\n")
	b.WriteString("  HYPEMAN_NETWORK_MODE=user    QEMU user-mode networking: outbound only, no bridge, no NAT rules\n")
	b.WriteString("  HYPEMAN_NETWORK_NETNS=NAME   bridge, TAPs and NAT inside network namespace NAME (ip netns add NAME)\n")
	return b.String()
}
