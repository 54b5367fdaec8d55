package guestinit

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hypeman/internal/guest/agent"
	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/network"
	"hypeman/internal/network/nettest"
)

// TestNetworkInVM boots one VM whose NIC is a TAP on a bridge inside a
// throwaway network namespace (QEMU runs in it; no packet leaves it). The
// init configures the network from the config disk before busybox httpd
// starts; the page is fetched from the namespace by the guest's IP. Then the
// guest is re-addressed through the agent, as after a fork (new MAC and IP),
// and the page is fetched at the new IP; the namespace learns the new MAC
// from the guest's gratuitous ARP alone. The RNG reseed op runs against the
// real kernel.
func TestNetworkInVM(t *testing.T) {
	kit := newVMKit(t)
	ns := nettest.NewNS(t)
	for _, argv := range [][]string{
		{"ip", "link", "add", "br0", "type", "bridge"},
		{"ip", "addr", "add", "10.88.0.1/24", "dev", "br0"},
		{"ip", "link", "set", "br0", "up"},
		{"sysctl", "-qw", "net.ipv4.conf.br0.arp_accept=1"},
		{"ip", "tuntap", "add", "dev", "tap0", "mode", "tap"},
		{"ip", "link", "set", "tap0", "master", "br0"},
		{"ip", "link", "set", "tap0", "up"},
	} {
		nettest.Run(t, ns, argv...)
	}
	hostNS, err := network.OpenNetNS(ns)
	require.NoError(t, err)
	defer hostNS.Close()

	const mac1, mac2 = "02:00:00:88:00:02", "02:00:00:88:00:03"
	kit.netns = ns
	kit.extraArgs = []string{
		"-netdev", "tap,id=net0,ifname=tap0,script=no,downscript=no",
		"-device", "virtio-net-device,netdev=net0,mac=" + mac1,
	}
	img := buildImage(t, map[string]imageFile{
		"www/index.html":  {data: "hello from the guest\n"},
		"etc/passwd":      {data: "root:x:0:0:root:/root:/bin/sh\n"},
		"etc/group":       {data: "root:x:0:\n"},
		"etc/resolv.conf": {data: "nameserver 192.0.2.1\n"},
	})
	cfg := &guestconfig.Config{
		Entrypoint: []string{"httpd", "-f", "-p", "80", "-h", "/www"},
		Hostname:   "web",
		RootFS:     "erofs",
		Network: &guestconfig.Network{
			MAC: mac1, Address: "10.88.0.2/24", Gateway: "10.88.0.1", DNS: []string{"10.88.0.1"},
		},
	}
	start := time.Now()
	vm := kit.start(t, cfg, img, newOverlayDisk(t))

	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c, err := agent.Dial(ctx, vm.agentSock)
	require.NoError(t, err)
	defer c.Close()
	vm.waitFor(t, guestconfig.MarkerProgramStart, 30*time.Second)

	// The boot announced the address: the namespace knows the guest's MAC
	// before sending it anything.
	waitNeigh(t, ns, "10.88.0.2", mac1)

	httpc := &http.Client{
		Transport: &http.Transport{DialContext: hostNS.DialContext, DisableKeepAlives: true},
		Timeout:   3 * time.Second,
	}
	get := func(ip string) (string, error) {
		resp, err := httpc.Get("http://" + ip + "/index.html")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("status %s", resp.Status)
		}
		return string(b), err
	}
	// The address is configured before the program starts, so httpd's
	// bind succeeded; it may take a moment to reach accept().
	var page string
	deadline := time.Now().Add(20 * time.Second)
	for {
		page, err = get("10.88.0.2")
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	require.NoError(t, err, "GET from the namespace; serial log:\n%s", vm.log())
	assert.Equal(t, "hello from the guest\n", page)
	t.Logf("VM start to page served at the boot address: %s", time.Since(start))
	assert.NotContains(t, vm.log(), "network not configured")

	run := func(argv ...string) string {
		t.Helper()
		var out bytes.Buffer
		res, err := c.Exec(ctx, agent.ExecRequest{Argv: argv}, agent.ExecIO{Stdout: &out, Stderr: &out})
		require.NoError(t, err)
		require.Equal(t, 0, res.ExitCode, "%v: %s", argv, out.String())
		return out.String()
	}
	assert.Equal(t, mac1+"\n", run("cat", "/sys/class/net/eth0/address"))
	assert.Equal(t, "nameserver 10.88.0.1\n", run("cat", "/etc/resolv.conf"))
	assert.Contains(t, run("cat", "/etc/hosts"), "10.88.0.2\tweb\n")
	assert.Contains(t, run("ip", "route"), "default via 10.88.0.1 dev eth0")
	assert.Contains(t, run("ip", "addr", "show", "lo"), "inet 127.0.0.1/8")
	dm := run("dmesg")
	if m := regexp.MustCompile(`network configured.*took=(\S+)`).FindStringSubmatch(dm); m != nil {
		t.Logf("boot-time network configuration in the guest: %s", m[1])
	} else {
		t.Errorf("no 'network configured' line in the guest's kernel log")
	}

	seed := make([]byte, 64)
	_, _ = rand.Read(seed)
	require.NoError(t, c.Reseed(ctx, seed), "reseed against the guest kernel (RNDADDENTROPY + RNDRESEEDCRNG)")

	// Re-address as after a fork.
	t0 := time.Now()
	require.NoError(t, c.ConfigureNetwork(ctx, guestconfig.Network{
		MAC: mac2, Address: "10.88.0.3/24", Gateway: "10.88.0.1", DNS: []string{"10.88.0.53"},
	}))
	t.Logf("ConfigureNetwork round trip (MAC + address change): %s", time.Since(t0))
	// Learnt from the gratuitous ARP: nothing was sent to 10.88.0.3 yet.
	t.Logf("namespace learnt the new MAC %s after ConfigureNetwork returned", waitNeigh(t, ns, "10.88.0.3", mac2))
	page, err = get("10.88.0.3")
	require.NoError(t, err, "GET at the new address")
	assert.Equal(t, "hello from the guest\n", page)
	assert.Equal(t, mac2+"\n", run("cat", "/sys/class/net/eth0/address"))
	assert.Equal(t, "nameserver 10.88.0.53\n", run("cat", "/etc/resolv.conf"))
	assert.Contains(t, run("cat", "/etc/hosts"), "10.88.0.3\tweb\n")
	assert.NotContains(t, run("ip", "addr", "show", "eth0"), "10.88.0.2/")
	assert.Contains(t, run("ip", "route"), "default via 10.88.0.1 dev eth0")
	_, err = get("10.88.0.2")
	assert.Error(t, err, "the old address must no longer answer")

	// A bad request is refused and changes nothing.
	var re *agent.RemoteError
	err = c.ConfigureNetwork(ctx, guestconfig.Network{Address: "10.88.0.4"})
	require.ErrorAs(t, err, &re)
	assert.Equal(t, agent.CodeBadRequest, re.Code)
	assert.Contains(t, run("ip", "addr", "show", "eth0"), "10.88.0.3/24")

	require.NoError(t, c.Shutdown(ctx))
	exit := vm.wait(t, 60*time.Second)
	assert.Equal(t, 143, exit.Code, "httpd ends on SIGTERM: %+v", exit)
}

// waitNeigh waits until namespace ns has a neighbour entry ip → mac on br0
// and returns how long that took.
func waitNeigh(t *testing.T, ns, ip, mac string) time.Duration {
	t.Helper()
	t0 := time.Now()
	for {
		out := nettest.Run(t, ns, "ip", "neigh", "show", ip, "dev", "br0")
		if strings.Contains(out, "lladdr "+mac) {
			return time.Since(t0)
		}
		if time.Since(t0) > 5*time.Second {
			t.Fatalf("namespace did not learn %s → %s from a gratuitous ARP: %q", ip, mac, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
