package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"hypeman/internal/fsutil"
)

func mustPool(t *testing.T, s string) pool {
	t.Helper()
	p, err := newPool(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPoolArithmetic(t *testing.T) {
	p := mustPool(t, "10.100.0.0/16")
	if p.gateway.String() != "10.100.0.1" || p.first.String() != "10.100.0.2" || p.last.String() != "10.100.255.254" {
		t.Fatalf("pool %+v", p)
	}
	if p.size() != 65533 {
		t.Fatalf("size %d", p.size())
	}
	for _, a := range []string{"10.100.0.0", "10.100.0.1", "10.100.255.255", "10.101.0.2", "10.99.255.254"} {
		if p.leasable(netip.MustParseAddr(a)) {
			t.Errorf("%s leasable", a)
		}
	}
	if got := p.after(p.last); got != p.first {
		t.Fatalf("after(last) = %s", got)
	}
	for _, bad := range []string{"10.100.0.1/16", "10.100.0.0/31", "10.0.0.0/7", "fd00::/64", "nonsense"} {
		if _, err := newPool(bad); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("newPool(%q) = %v, want ErrInvalidConfig", bad, err)
		}
	}
}

func TestNaming(t *testing.T) {
	m1, m2 := MACFor("inst-a", 0), MACFor("inst-a", 0)
	if m1 != m2 {
		t.Fatal("MAC not stable")
	}
	if MACFor("inst-b", 0) == m1 || MACFor("inst-a", 1) == m1 {
		t.Fatal("MACs collide")
	}
	hw, err := net.ParseMAC(m1)
	if err != nil || len(hw) != 6 || hw[0] != 0x02 {
		t.Fatalf("MAC %q not locally administered unicast", m1)
	}
	name := TAPName(netip.MustParseAddr("10.100.3.7"))
	if name != "hm0a640307" || len(name) > 15 || !isTAPName(name) {
		t.Fatalf("TAP name %q", name)
	}
	for _, s := range []string{"hm0a64030", "hm0a64030g", "xx0a640307", "hm0A640307"} {
		if isTAPName(s) {
			t.Errorf("isTAPName(%q)", s)
		}
	}
}

func TestAllocateSkipsSpecialAddressesAndExhausts(t *testing.T) {
	// /29: .0 network, .1 gateway, .2-.6 leasable, .7 broadcast.
	a, err := openIPAM(t.TempDir(), mustPool(t, "192.0.2.0/29"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i := range 5 {
		l, fresh, err := a.allocate(fmt.Sprintf("i%d", i), []string{"192.0.2.53"}, time.Now())
		if err != nil || !fresh {
			t.Fatalf("allocate %d: %v fresh=%v", i, err, fresh)
		}
		if want := fmt.Sprintf("192.0.2.%d", i+2); l.IP != want {
			t.Fatalf("lease %d got %s want %s", i, l.IP, want)
		}
		if l.Gateway != "192.0.2.1" || l.PrefixLen != 29 || l.TAP != TAPName(netip.MustParseAddr(l.IP)) || l.Mode != ModeBridge {
			t.Fatalf("lease %+v", l)
		}
		if seen[l.MAC] {
			t.Fatal("duplicate MAC")
		}
		seen[l.MAC] = true
	}
	_, _, err = a.allocate("one-too-many", nil, time.Now())
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("want ErrExhausted, got %v", err)
	}
	// The same instance asking again gets its lease, not an error.
	l, fresh, err := a.allocate("i3", nil, time.Now())
	if err != nil || fresh || l.IP != "192.0.2.5" {
		t.Fatalf("re-allocate: %+v fresh=%v err=%v", l, fresh, err)
	}
}

func TestReleaseReusesLastAndPersistence(t *testing.T) {
	dir := t.TempDir()
	p := mustPool(t, "192.0.2.0/29")
	a, err := openIPAM(dir, p)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c"} { // .2 .3 .4
		if _, _, err := a.allocate(id, nil, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if l, err := a.release("a"); err != nil || l == nil || l.IP != "192.0.2.2" {
		t.Fatalf("release a: %+v %v", l, err)
	}
	if l, err := a.release("nobody"); err != nil || l != nil {
		t.Fatalf("release unknown: %+v %v", l, err)
	}
	// The cursor moves on: the freed .2 comes back only after .5 and .6.
	want := []string{"192.0.2.5", "192.0.2.6", "192.0.2.2"}
	for i, id := range []string{"d", "e", "f"} {
		l, _, err := a.allocate(id, nil, time.Now())
		if err != nil || l.IP != want[i] {
			t.Fatalf("allocate %s: %+v %v, want %s", id, l, err, want[i])
		}
	}
	if _, err := a.release("e"); err != nil {
		t.Fatal(err)
	}
	before := a.list()

	// A new process sees exactly the same leases and cursor.
	b, err := openIPAM(dir, p)
	if err != nil {
		t.Fatal(err)
	}
	after := b.list()
	if len(after) != len(before) || len(after) != 4 {
		t.Fatalf("reloaded %d leases, had %d", len(after), len(before))
	}
	for i := range after {
		x, y := after[i], before[i]
		if x.InstanceID != y.InstanceID || x.IP != y.IP || x.MAC != y.MAC || x.TAP != y.TAP || !x.CreatedAt.Equal(y.CreatedAt) {
			t.Fatalf("lease %d differs after reload: %+v vs %+v", i, x, y)
		}
	}
	l, _, err := b.allocate("g", nil, time.Now())
	if err != nil || l.IP != "192.0.2.6" {
		t.Fatalf("after reload got %+v %v, want the released .6 (only free address)", l, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("state dir holds %d entries, want only %s (no temp files)", len(entries), LeasesFile)
	}
}

func TestSubnetChangeAndCorruption(t *testing.T) {
	dir := t.TempDir()
	a, err := openIPAM(dir, mustPool(t, "192.0.2.0/29"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.allocate("x", nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := openIPAM(dir, mustPool(t, "198.51.100.0/24")); !errors.Is(err, ErrSubnetChanged) {
		t.Fatalf("want ErrSubnetChanged, got %v", err)
	}
	if _, err := a.release("x"); err != nil {
		t.Fatal(err)
	}
	b, err := openIPAM(dir, mustPool(t, "198.51.100.0/24"))
	if err != nil {
		t.Fatalf("empty lease db must follow a subnet change: %v", err)
	}
	if l, _, err := b.allocate("y", nil, time.Now()); err != nil || l.IP != "198.51.100.2" {
		t.Fatalf("%+v %v", l, err)
	}

	path := filepath.Join(dir, LeasesFile)
	for name, content := range map[string]string{
		"garbage":     "{not json",
		"bad ip":      `{"version":1,"subnet":"198.51.100.0/24","leases":{"y":{"instance_id":"y","ip":"198.51.100.1","mac":"02:00:00:00:00:01"}}}`,
		"dup ip":      `{"version":1,"subnet":"198.51.100.0/24","leases":{"y":{"instance_id":"y","ip":"198.51.100.2","mac":"02:00:00:00:00:01"},"z":{"instance_id":"z","ip":"198.51.100.2","mac":"02:00:00:00:00:02"}}}`,
		"id mismatch": `{"version":1,"subnet":"198.51.100.0/24","leases":{"y":{"instance_id":"q","ip":"198.51.100.2","mac":"02:00:00:00:00:01"}}}`,
		"version":     `{"version":2,"subnet":"198.51.100.0/24","leases":{}}`,
	} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := openIPAM(dir, mustPool(t, "198.51.100.0/24")); !errors.Is(err, ErrCorruptLeases) {
			t.Errorf("%s: want ErrCorruptLeases, got %v", name, err)
		}
	}
	// An unknown version names the file and the version.
	os.WriteFile(path, []byte(`{"version":2,"subnet":"198.51.100.0/24","leases":{}}`), 0o600)
	var ve *fsutil.VersionError
	if _, err := openIPAM(dir, mustPool(t, "198.51.100.0/24")); !errors.As(err, &ve) || ve.Path != path || ve.Version != 2 {
		t.Errorf("unknown version: %v", err)
	}
	// Written before versions existed: read as version 1.
	os.WriteFile(path, []byte(`{"subnet":"198.51.100.0/24","leases":{"y":{"instance_id":"y","ip":"198.51.100.2","mac":"02:00:00:00:00:01"}}}`), 0o600)
	c, err := openIPAM(dir, mustPool(t, "198.51.100.0/24"))
	if err != nil {
		t.Fatalf("unversioned leases: %v", err)
	}
	if _, _, err := c.allocate("z", nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	var saved leaseState
	if err := fsutil.ReadJSON(path, &saved); err != nil || saved.Version != 1 || len(saved.Leases) != 2 {
		t.Errorf("rewritten leases: %+v %v", saved, err)
	}
}

func TestConcurrentAllocate(t *testing.T) {
	dir := t.TempDir()
	p := mustPool(t, "10.100.0.0/16")
	a, err := openIPAM(dir, p)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	var wg sync.WaitGroup
	ips := make([]string, 2*n)
	errs := make([]error, 2*n)
	for i := range 2 * n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, _, err := a.allocate(fmt.Sprintf("inst-%d", i%n), nil, time.Now()) // each ID twice
			errs[i] = err
			if err == nil {
				ips[i] = l.IP
			}
		}()
	}
	wg.Wait()
	owner := map[string]int{}
	for i, ip := range ips {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if ips[i] != ips[(i+n)%(2*n)] {
			t.Fatalf("instance %d got two IPs: %s and %s", i%n, ips[i], ips[(i+n)%(2*n)])
		}
		if o, ok := owner[ip]; ok && o != i%n {
			t.Fatalf("IP %s given to instances %d and %d", ip, o, i%n)
		}
		owner[ip] = i % n
	}
	if len(owner) != n {
		t.Fatalf("%d distinct IPs for %d instances", len(owner), n)
	}
	b, err := openIPAM(dir, p)
	if err != nil || len(b.list()) != n {
		t.Fatalf("persisted %d leases (%v), want %d", len(b.list()), err, n)
	}
}

func TestParseResolvConf(t *testing.T) {
	got := parseResolvConf([]byte(`# comment
nameserver 127.0.0.53
nameserver 192.0.2.53
nameserver 2001:db8::53
nameserver 192.0.2.53
search example.com
nameserver 198.51.100.1 # trailing
`))
	if strings.Join(got, ",") != "192.0.2.53,198.51.100.1" {
		t.Fatalf("got %v", got)
	}
	dir := t.TempDir()
	stub, upstream := filepath.Join(dir, "stub"), filepath.Join(dir, "upstream")
	os.WriteFile(stub, []byte("nameserver 127.0.0.53\n"), 0o644)
	os.WriteFile(upstream, []byte("nameserver 203.0.113.7\n"), 0o644)
	if got := hostResolvers([]string{stub, filepath.Join(dir, "missing"), upstream}); len(got) != 1 || got[0] != "203.0.113.7" {
		t.Fatalf("stub-only resolv.conf should fall through to the upstream list, got %v", got)
	}
	if got := hostResolvers([]string{stub}); got != nil {
		t.Fatalf("loopback-only must give no servers, got %v", got)
	}
}

func TestLeaseViews(t *testing.T) {
	l := &Lease{InstanceID: "x", Mode: ModeBridge, IP: "10.100.0.9", PrefixLen: 16, Gateway: "10.100.0.1",
		MAC: "02:aa:bb:cc:dd:ee", TAP: "hm0a640009", DNS: []string{"192.0.2.53"}}
	g := l.GuestConfig()
	if g.Address != "10.100.0.9/16" || g.Gateway != "10.100.0.1" || g.MAC != l.MAC || len(g.DNS) != 1 || g.DNS[0] != "192.0.2.53" {
		t.Fatalf("guest config %+v", g)
	}
	g.DNS[0] = "changed"
	if l.DNS[0] != "192.0.2.53" {
		t.Fatal("GuestConfig shares the DNS slice")
	}
	if n := l.NetConfig(); n.TAP != "hm0a640009" || n.User || n.MAC != l.MAC {
		t.Fatalf("net config %+v", n)
	}
	u := &Lease{Mode: ModeUser, IP: UserGuestIP, PrefixLen: 24, Gateway: UserGateway, MAC: "02:00:00:00:00:01", DNS: []string{UserDNS}}
	if n := u.NetConfig(); !n.User || n.TAP != "" {
		t.Fatalf("user net config %+v", n)
	}
	if g := u.GuestConfig(); g.Address != "10.0.2.15/24" || g.Gateway != "10.0.2.2" || g.DNS[0] != "10.0.2.3" {
		t.Fatalf("user guest config %+v", g)
	}
}

func TestConfigValidation(t *testing.T) {
	for name, c := range map[string]Config{
		"mode":     {Mode: "bridged", StateDir: "/x"},
		"bridge":   {Bridge: "a-very-long-bridge-name", StateDir: "/x"},
		"quote":    {Bridge: `br"0`, StateDir: "/x"}, // it is quoted in the nft ruleset
		"dns":      {DNS: []string{"dns.example"}, StateDir: "/x"},
		"statedir": {Mode: ModeBridge},
	} {
		if _, err := c.withDefaults(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: want ErrInvalidConfig, got %v", name, err)
		}
	}
	c, err := Config{StateDir: "/x"}.withDefaults()
	if err != nil || c.Mode != ModeAuto || c.Bridge != "vmbr0" || c.Subnet != "10.100.0.0/16" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	if _, err := (Config{Mode: ModeUser}).withDefaults(); err != nil {
		t.Fatalf("user mode needs no state dir: %v", err)
	}
}
