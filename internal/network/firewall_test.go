package network

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// chain returns the body of chain name in a rendered ruleset.
func chain(t *testing.T, ruleset, name string) []string {
	t.Helper()
	_, rest, ok := strings.Cut(ruleset, "\tchain "+name+" {\n")
	if !ok {
		t.Fatalf("no chain %s in:\n%s", name, ruleset)
	}
	body, _, _ := strings.Cut(rest, "\t}\n")
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(body), "\n") {
		out = append(out, strings.TrimSpace(l))
	}
	return out
}

func TestFirewallRuleset(t *testing.T) {
	f := firewall{
		bridge: "vmbr0",
		subnet: netip.MustParsePrefix("10.100.0.0/16"),
		dns:    []netip.Addr{netip.MustParseAddr("10.100.0.1"), netip.MustParseAddr("192.0.2.53")},
	}
	rs := f.nftRuleset()
	if rs != f.nftRuleset() {
		t.Fatal("rendering is not deterministic")
	}
	// Idempotent as a transaction: both our tables are declared and deleted
	// before the one table is defined, and nothing is defined twice.
	if !strings.HasPrefix(rs, "table inet hypeman\ndelete table inet hypeman\ntable ip hypeman\ndelete table ip hypeman\ntable inet hypeman {\n") {
		t.Fatalf("preamble:\n%s", rs)
	}
	if n := strings.Count(rs, "table inet hypeman {"); n != 1 {
		t.Fatalf("table defined %d times", n)
	}

	if got := chain(t, rs, "input"); !slices.Contains(got, `iifname "vmbr0" jump guest_to_host`) {
		t.Fatalf("input chain %q", got)
	}
	want := []string{
		"ct state established,related accept",
		"meta nfproto ipv6 counter drop",
		"ip daddr { 10.100.0.1, 192.0.2.53 } meta l4proto { tcp, udp } th dport 53 accept",
		"counter drop",
	}
	if got := chain(t, rs, "guest_to_host"); !slices.Equal(got, want) {
		t.Fatalf("guest_to_host\n got %q\nwant %q", got, want)
	}
	if got := chain(t, rs, "forward"); !slices.Contains(got, `iifname "vmbr0" jump guest_forward`) {
		t.Fatalf("forward chain %q", got)
	}
	want = []string{`oifname "vmbr0" counter drop`, "meta nfproto ipv6 counter drop", "ip saddr != 10.100.0.0/16 counter drop"}
	if got := chain(t, rs, "guest_forward"); !slices.Equal(got, want) {
		t.Fatalf("guest_forward\n got %q\nwant %q", got, want)
	}
	if got := chain(t, rs, "postrouting"); !slices.Contains(got, "ip saddr 10.100.0.0/16 ip daddr != 10.100.0.0/16 masquerade") {
		t.Fatalf("postrouting %q", got)
	}

	// Published ingress ports open before the final drop; on one address
	// only when ingress listens on one.
	f.dns = nil
	f.published = published{ports: []int{80, 8080}}
	want = []string{"ct state established,related accept", "meta nfproto ipv6 counter drop", "tcp dport { 80, 8080 } accept", "counter drop"}
	if got := chain(t, f.nftRuleset(), "guest_to_host"); !slices.Equal(got, want) {
		t.Fatalf("published on all addresses\n got %q\nwant %q", got, want)
	}
	f.published.addr = netip.MustParseAddr("192.0.2.7")
	if got := chain(t, f.nftRuleset(), "guest_to_host"); got[2] != "ip daddr 192.0.2.7 tcp dport { 80, 8080 } accept" {
		t.Fatalf("published on one address: %q", got)
	}
	if rm := nftRemove(); rm != "table inet hypeman\ndelete table inet hypeman\ntable ip hypeman\ndelete table ip hypeman\n" {
		t.Fatalf("nftRemove %q", rm)
	}
}

func TestPublishedFor(t *testing.T) {
	ports := []int{8080, 80, 8080}
	for _, tc := range []struct {
		listen string
		want   published
	}{
		{"", published{ports: []int{80, 8080}}},
		{"0.0.0.0", published{ports: []int{80, 8080}}},
		{"::", published{ports: []int{80, 8080}}},
		{"192.0.2.7", published{addr: netip.MustParseAddr("192.0.2.7"), ports: []int{80, 8080}}},
		{"::ffff:192.0.2.7", published{addr: netip.MustParseAddr("192.0.2.7"), ports: []int{80, 8080}}},
		{"127.0.0.1", published{}},
		{"::1", published{}},
		{"2001:db8::1", published{}},
	} {
		got, err := publishedFor(tc.listen, ports)
		if err != nil || !got.equal(tc.want) {
			t.Errorf("publishedFor(%q) = %+v, %v; want %+v", tc.listen, got, err, tc.want)
		}
	}
	if got, err := publishedFor("0.0.0.0", nil); err != nil || !got.equal(published{}) {
		t.Errorf("no ports: %+v, %v", got, err)
	}
	if _, err := publishedFor("localhost", ports); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("a host name: %v", err)
	}
	if !slices.Equal(ports, []int{8080, 80, 8080}) {
		t.Errorf("caller's slice modified: %v", ports)
	}
}
