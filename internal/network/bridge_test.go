package network_test

// These tests create bridges, TAP devices, addresses and NAT rules only
// inside network namespaces they create (nettest.NewNS), and send traffic
// only to addresses inside those namespaces or to loopback.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"hypeman/internal/network"
	"hypeman/internal/network/nettest"
	"hypeman/internal/testutil/tier"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newBridgeManager(t *testing.T, ns, stateDir string) *network.Manager {
	t.Helper()
	m, err := network.New(context.Background(), network.Config{
		Mode: network.ModeBridge, NetNS: ns, StateDir: stateDir, DNS: []string{"192.0.2.53"},
	}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// ipLink is the subset of `ip -j -d link show` we check.
type ipLink struct {
	IfName    string   `json:"ifname"`
	Flags     []string `json:"flags"`
	Master    string   `json:"master"`
	Address   string   `json:"address"`
	OperState string   `json:"operstate"`
	LinkInfo  struct {
		InfoKind string `json:"info_kind"`
		InfoData struct {
			Type  string `json:"type"`
			User  string `json:"user"`
			PI    bool   `json:"pi"`
			VNet  bool   `json:"vnet_hdr"`
			Multi bool   `json:"multi_queue"`
		} `json:"info_data"`
	} `json:"linkinfo"`
	AddrInfo []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
	} `json:"addr_info"`
}

func links(t *testing.T, ns string) map[string]ipLink {
	t.Helper()
	var ls []ipLink
	if err := json.Unmarshal([]byte(nettest.Run(t, ns, "ip", "-j", "-d", "addr", "show")), &ls); err != nil {
		t.Fatal(err)
	}
	out := map[string]ipLink{}
	for _, l := range ls {
		out[l.IfName] = l
	}
	return out
}

func hasFlag(l ipLink, f string) bool {
	for _, x := range l.Flags {
		if x == f {
			return true
		}
	}
	return false
}

// isolated reports whether dev is an isolated bridge port in ns.
func isolated(t *testing.T, ns, dev string) bool {
	t.Helper()
	var ports []struct {
		Isolated bool `json:"isolated"`
	}
	if err := json.Unmarshal([]byte(nettest.Run(t, ns, "bridge", "-j", "-d", "link", "show", "dev", dev)), &ports); err != nil || len(ports) != 1 {
		t.Fatalf("bridge link show %s: %v %+v", dev, err, ports)
	}
	return ports[0].Isolated
}

func TestBridgeLifecycleInNetNS(t *testing.T) {
	ns := nettest.NewNS(t)
	hostForward, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	state := t.TempDir()

	start := time.Now()
	m, err := network.New(ctx, network.Config{NetNS: ns, StateDir: state, DNS: []string{"192.0.2.53"}}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("New (auto -> bridge, first setup incl. nft and TAP probe): %v", time.Since(start))
	defer m.Close()
	if c := m.Capability(); c.Mode != network.ModeBridge || !strings.Contains(c.Reason, "vmbr0") || !strings.Contains(c.Reason, "nftables") {
		t.Fatalf("capability %+v", c)
	}

	check := func(when string) ipLink {
		t.Helper()
		br, ok := links(t, ns)["vmbr0"]
		if !ok {
			t.Fatalf("%s: no vmbr0 in netns", when)
		}
		if br.LinkInfo.InfoKind != "bridge" || !hasFlag(br, "UP") {
			t.Fatalf("%s: bridge %+v", when, br)
		}
		var v4 []string
		for _, a := range br.AddrInfo {
			if a.Family == "inet" {
				v4 = append(v4, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
			}
		}
		if len(v4) != 1 || v4[0] != "10.100.0.1/16" {
			t.Fatalf("%s: bridge addresses %v", when, v4)
		}
		if fwd := strings.TrimSpace(nettest.Run(t, ns, "cat", "/proc/sys/net/ipv4/ip_forward")); fwd != "1" {
			t.Fatalf("%s: ip_forward in netns = %s", when, fwd)
		}
		rules := nettest.Run(t, ns, "nft", "-s", "list", "table", "inet", "hypeman")
		if strings.Count(rules, "masquerade") != 1 || !strings.Contains(rules, "ip saddr 10.100.0.0/16 ip daddr != 10.100.0.0/16 masquerade") ||
			strings.Count(rules, `iifname "vmbr0" jump guest_to_host`) != 1 || strings.Count(rules, `iifname "vmbr0" jump guest_forward`) != 1 {
			t.Fatalf("%s: nft table:\n%s", when, rules)
		}
		if tables := nettest.Run(t, ns, "nft", "list", "tables"); strings.TrimSpace(tables) != "table inet hypeman" {
			t.Fatalf("%s: tables:\n%s", when, tables)
		}
		return br
	}
	br1 := check("first setup")
	first := nettest.Run(t, ns, "nft", "-s", "list", "ruleset")
	start = time.Now()
	if err := m.Setup(ctx); err != nil {
		t.Fatalf("second Setup: %v", err)
	}
	t.Logf("Setup again (idempotent): %v", time.Since(start))
	check("second setup")
	if again := nettest.Run(t, ns, "nft", "-s", "list", "ruleset"); again != first {
		t.Fatalf("ruleset changed by a second Setup:\n%s\nthen\n%s", first, again)
	}

	// The host namespace was not touched.
	if now, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(now) != string(hostForward) {
		t.Fatalf("host ip_forward changed from %q to %q", hostForward, now)
	}

	// Leases and TAPs.
	a, err := m.Allocate(ctx, "inst-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Allocate(ctx, "inst-b")
	if err != nil {
		t.Fatal(err)
	}
	if a.IP != "10.100.0.2" || b.IP != "10.100.0.3" || a.TAP == b.TAP || a.MAC == b.MAC || a.DNS[0] != "192.0.2.53" {
		t.Fatalf("leases %+v %+v", a, b)
	}
	for _, l := range []*network.Lease{a, b, a} { // a twice: adoption is idempotent
		start := time.Now()
		if err := m.CreateTAP(ctx, l, network.Bandwidth{}); err != nil {
			t.Fatal(err)
		}
		t.Logf("CreateTAP %s: %v", l.TAP, time.Since(start))
	}
	ls := links(t, ns)
	for _, l := range []*network.Lease{a, b} {
		tap, ok := ls[l.TAP]
		if !ok {
			t.Fatalf("no %s", l.TAP)
		}
		d := tap.LinkInfo.InfoData
		if tap.LinkInfo.InfoKind != "tun" || d.Type != "tap" || tap.Master != "vmbr0" || !hasFlag(tap, "UP") || d.PI || d.Multi || d.User != "root" {
			t.Fatalf("TAP %s: %+v", l.TAP, tap)
		}
		if !isolated(t, ns, l.TAP) {
			t.Fatalf("TAP %s is not an isolated bridge port", l.TAP)
		}
	}
	if br := ls["vmbr0"]; br.Address != br1.Address {
		t.Fatalf("bridge MAC changed from %s to %s when ports were added", br1.Address, br.Address)
	}
	if hw, _ := net.ParseMAC(br1.Address); hw[0]&0x02 == 0 {
		t.Fatalf("bridge MAC %s not locally administered", br1.Address)
	}

	if err := m.DeleteTAP(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteTAP(ctx, b); err != nil {
		t.Fatalf("deleting a missing TAP: %v", err)
	}
	if _, ok := links(t, ns)[b.TAP]; ok {
		t.Fatal("TAP b still there")
	}
	if err := m.Release(ctx, "inst-a"); err != nil {
		t.Fatal(err)
	}
	if _, ok := links(t, ns)[a.TAP]; ok {
		t.Fatal("Release left TAP a")
	}
	if _, ok := m.Lease("inst-a"); ok {
		t.Fatal("lease a still there")
	}

	// Prune: an orphan TAP named like ours on the bridge, and a lease of an
	// instance that no longer exists.
	nettest.Run(t, ns, "ip", "tuntap", "add", "hm0a64fffe", "mode", "tap")
	nettest.Run(t, ns, "ip", "link", "set", "hm0a64fffe", "master", "vmbr0")
	nettest.Run(t, ns, "ip", "tuntap", "add", "hmkeepme01", "mode", "tap") // not ours by name
	nettest.Run(t, ns, "ip", "link", "set", "hmkeepme01", "master", "vmbr0")
	c, err := m.Allocate(ctx, "inst-c")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CreateTAP(ctx, c, network.Bandwidth{}); err != nil {
		t.Fatal(err)
	}
	released, err := m.Prune(ctx, func(id string) bool { return id == "inst-c" })
	if err != nil || len(released) != 1 || released[0] != "inst-b" {
		t.Fatalf("Prune released %v, %v; want [inst-b]", released, err)
	}
	ls = links(t, ns)
	if _, ok := ls["hm0a64fffe"]; ok {
		t.Fatal("orphan TAP not pruned")
	}
	if _, ok := ls["hmkeepme01"]; !ok {
		t.Fatal("Prune deleted a device that is not named like ours")
	}
	if _, ok := ls[c.TAP]; !ok {
		t.Fatal("Prune deleted a kept instance's TAP")
	}

	// A new manager (daemon restart) keeps the lease and adopts the TAP,
	// isolating it even when it was not (a TAP made by an older version),
	// and replaces an older version's NAT-only table.
	nettest.Run(t, ns, "bridge", "link", "set", "dev", c.TAP, "isolated", "off")
	nettest.Run(t, ns, "nft", "add", "table", "ip", "hypeman")
	m2 := newBridgeManager(t, ns, state)
	if !isolated(t, ns, c.TAP) {
		t.Fatal("a re-adopted TAP was not isolated at start")
	}
	check("restart")
	if l, ok := m2.Lease("inst-c"); !ok || l.IP != c.IP || l.MAC != c.MAC || l.TAP != c.TAP {
		t.Fatalf("lease after restart: %+v %v", l, ok)
	}
	if l, err := m2.Allocate(ctx, "inst-d"); err != nil || l.IP == c.IP {
		t.Fatalf("new lease after restart %+v %v", l, err)
	}

	if err := m2.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	ls = links(t, ns)
	if _, ok := ls["vmbr0"]; ok {
		t.Fatal("bridge left after Teardown")
	}
	if _, ok := ls[c.TAP]; ok {
		t.Fatal("TAP left after Teardown")
	}
	if out := nettest.Run(t, ns, "nft", "list", "tables"); strings.Contains(out, "hypeman") {
		t.Fatalf("nft table left after Teardown:\n%s", out)
	}
	if err := m2.Teardown(ctx); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
}

// TestGuestTrafficAndNAT simulates a guest on the bridge (a namespace joined
// by a veth pair) and an "outside" network behind the host namespace that
// has no route back to the guest subnet: the guest reaches it only through
// forwarding plus masquerade, and the outside server sees the host's
// address as the source.
func TestGuestTrafficAndNAT(t *testing.T) {
	ns := nettest.NewNS(t)
	ctx := context.Background()
	m := newBridgeManager(t, ns, t.TempDir())
	lease, err := m.Allocate(ctx, "guest-1")
	if err != nil {
		t.Fatal(err)
	}
	guest := nettest.AddGuest(t, ns, "vmbr0", lease.GuestConfig().Address, lease.Gateway)

	// host -> guest, dialed through the manager's namespace.
	gl := nettest.Listen(t, guest, net.JoinHostPort(lease.IP, "8080"))
	go http.Serve(gl, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello from guest") }))
	hc := &http.Client{Transport: &http.Transport{DialContext: m.DialContext}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://" + net.JoinHostPort(lease.IP, "8080") + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello from guest" {
		t.Fatalf("body %q", body)
	}

	// guest -> outside via NAT.
	outside := nettest.AddOutside(t, ns)
	ol := nettest.Listen(t, outside, "192.0.2.2:9000")
	go http.Serve(ol, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.RemoteAddr) }))
	gns, err := network.OpenNetNS(guest)
	if err != nil {
		t.Fatal(err)
	}
	defer gns.Close()
	gc := &http.Client{Transport: &http.Transport{DialContext: gns.DialContext}, Timeout: 5 * time.Second}
	defer gc.CloseIdleConnections()
	resp, err = gc.Get("http://192.0.2.2:9000/")
	if err != nil {
		t.Fatalf("guest could not reach the outside network through NAT: %v", err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if host, _, _ := net.SplitHostPort(string(body)); host != "192.0.2.1" {
		t.Fatalf("outside saw source %q, want the masqueraded 192.0.2.1", body)
	}
}

func TestInNetNSAndWrapCommand(t *testing.T) {
	ns := nettest.NewNS(t)
	m, err := network.New(context.Background(), network.Config{Mode: network.ModeNone, NetNS: ns}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Allocate(context.Background(), "x"); !errors.Is(err, network.ErrDisabled) {
		t.Fatalf("mode none Allocate: %v", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(m.NetNSPath(), &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("net:[%d]", st.Ino)

	out := &strings.Builder{}
	cmd := exec.Command("readlink", "/proc/self/ns/net")
	cmd.Stdout = out
	if err := m.InNetNS(cmd.Start); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got != want {
		t.Fatalf("process started in InNetNS is in %s, want %s", got, want)
	}
	self, _ := os.Readlink("/proc/self/ns/net")
	if self == want {
		t.Fatal("the test process itself ended up in the namespace")
	}

	argv := m.WrapCommand([]string{"readlink", "/proc/self/ns/net"})
	b, err := exec.Command(argv[0], argv[1:]...).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != want {
		t.Fatalf("WrapCommand process is in %s, want %s", got, want)
	}
}

func TestBridgeRefusesConflicts(t *testing.T) {
	ctx := context.Background()
	t.Run("subnet used by another link", func(t *testing.T) {
		ns := nettest.NewNS(t)
		nettest.Run(t, ns, "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
		nettest.Run(t, ns, "ip", "addr", "add", "10.100.7.1/24", "dev", "d0")
		for _, mode := range []network.Mode{network.ModeBridge, network.ModeAuto} {
			_, err := network.New(ctx, network.Config{Mode: mode, NetNS: ns, StateDir: t.TempDir()}, nil)
			if !errors.Is(err, network.ErrSubnetConflict) {
				t.Fatalf("%s: want ErrSubnetConflict, got %v", mode, err)
			}
		}
		if _, ok := links(t, ns)["vmbr0"]; ok {
			t.Fatal("bridge created despite the conflict")
		}
	})
	t.Run("name taken by a non-bridge", func(t *testing.T) {
		ns := nettest.NewNS(t)
		nettest.Run(t, ns, "ip", "link", "add", "vmbr0", "type", "veth", "peer", "name", "d1")
		_, err := network.New(ctx, network.Config{Mode: network.ModeBridge, NetNS: ns, StateDir: t.TempDir()}, nil)
		if !errors.Is(err, network.ErrBridgeInUse) {
			t.Fatalf("want ErrBridgeInUse, got %v", err)
		}
	})
	t.Run("bridge with a foreign address", func(t *testing.T) {
		ns := nettest.NewNS(t)
		nettest.Run(t, ns, "ip", "link", "add", "vmbr0", "type", "bridge")
		nettest.Run(t, ns, "ip", "addr", "add", "192.0.2.10/24", "dev", "vmbr0")
		_, err := network.New(ctx, network.Config{Mode: network.ModeBridge, NetNS: ns, StateDir: t.TempDir()}, nil)
		if !errors.Is(err, network.ErrBridgeInUse) {
			t.Fatalf("want ErrBridgeInUse, got %v", err)
		}
		if out := nettest.Run(t, ns, "ip", "-4", "addr", "show", "vmbr0"); strings.Contains(out, "10.100.0.1") {
			t.Fatalf("address added to a foreign bridge:\n%s", out)
		}
	})
	t.Run("exhaustion", func(t *testing.T) {
		ns := nettest.NewNS(t)
		m, err := network.New(ctx, network.Config{Mode: network.ModeBridge, NetNS: ns, StateDir: t.TempDir(), Subnet: "10.100.0.0/30"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if l, err := m.Allocate(ctx, "a"); err != nil || l.IP != "10.100.0.2" {
			t.Fatalf("%+v %v", l, err)
		}
		if _, err := m.Allocate(ctx, "b"); !errors.Is(err, network.ErrExhausted) {
			t.Fatalf("want ErrExhausted, got %v", err)
		}
	})
}

// TestAutoFallsBackToUserMode runs New(auto) in a child process whose
// capability bounding set lacks CAP_NET_ADMIN (so root loses it at exec).
func TestAutoFallsBackToUserMode(t *testing.T) {
	if os.Getenv("HYPEMAN_NET_FALLBACK_CHILD") == "1" {
		// The namespace guards the host even if dropping the capability failed.
		m, err := network.New(context.Background(), network.Config{StateDir: t.TempDir(), NetNS: os.Getenv("HYPEMAN_NET_FALLBACK_NS")}, nil)
		if err != nil {
			t.Fatal(err)
		}
		c := m.Capability()
		l, err := m.Allocate(context.Background(), "inst")
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("RESULT mode=%s ip=%s user=%v tap=%q reason=%s\n", c.Mode, l.IP, l.NetConfig().User, l.TAP, c.Reason)
		return
	}
	ns := nettest.NewNS(t)
	tier.Tools(t, "setpriv")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "--",
		exe, "-test.run", "^TestAutoFallsBackToUserMode$", "-test.count=1")
	cmd.Env = append(os.Environ(), "HYPEMAN_NET_FALLBACK_CHILD=1", "HYPEMAN_NET_FALLBACK_NS="+ns)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	s := string(out)
	if !strings.Contains(s, "RESULT mode=user ip=10.0.2.15 user=true tap=\"\" reason=bridge networking needs root (CAP_NET_ADMIN)") {
		t.Fatalf("child output:\n%s", s)
	}
}
