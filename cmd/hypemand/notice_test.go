package main

import (
	"strings"
	"testing"

	"hypeman/internal/config"
)

// Issue 11 item 10: before touching the host network, hypemand (and so
// `make run`) says what it will change and how to run without it; it says
// nothing when the host namespace is left alone.
func TestNetworkNotice(t *testing.T) {
	load := func(env map[string]string) *config.Config {
		t.Helper()
		cfg, err := config.Load("", func(k string) string { return env[k] }, nil)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	can := func() string { return "" }
	cannot := func() string { return "bridge networking needs root" }
	want := []string{"creates bridge vmbr0 for 10.100.0.0/16", "IPv4 forwarding", "NAT rules", "masquerade",
		"HYPEMAN_NETWORK_MODE=none", "HYPEMAN_NETWORK_MODE=user", "HYPEMAN_NETWORK_NETNS="}
	for _, c := range []struct {
		name   string
		env    map[string]string
		bridge func() string
		notice bool
	}{
		{"auto as root", nil, can, true},
		{"bridge forced", map[string]string{"HYPEMAN_NETWORK_MODE": "bridge"}, can, true},
		{"auto without privileges falls back to user mode", nil, cannot, false},
		{"none", map[string]string{"HYPEMAN_NETWORK_MODE": "none"}, can, false},
		{"user", map[string]string{"HYPEMAN_NETWORK_MODE": "user"}, can, false},
		{"inside a netns", map[string]string{"HYPEMAN_NETWORK_NETNS": "lab"}, can, false},
	} {
		got := networkNotice(load(c.env), c.bridge)
		if !c.notice {
			if got != "" {
				t.Errorf("%s: unexpected notice:\n%s", c.name, got)
			}
			continue
		}
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: notice lacks %q:\n%s", c.name, w, got)
			}
		}
	}
	if got := networkNotice(load(map[string]string{"HYPEMAN_NETWORK_BRIDGE": "lab0", "HYPEMAN_NETWORK_SUBNET": "10.9.0.0/24"}), can); !strings.Contains(got, "bridge lab0 for 10.9.0.0/24") {
		t.Errorf("notice ignores the configured bridge and subnet:\n%s", got)
	}
}
