package agent

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/guest/guestnet"
	"hypeman/internal/network"
	"hypeman/internal/network/nettest"
)

// recorder is a fake NetworkConfigurer and Reseeder.
type recorder struct {
	mu    sync.Mutex
	nets  []guestconfig.Network
	seeds [][]byte
	err   error
}

func (r *recorder) ConfigureNetwork(_ context.Context, n guestconfig.Network) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nets = append(r.nets, n)
	return r.err
}

func (r *recorder) Reseed(seed []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seeds = append(r.seeds, append([]byte(nil), seed...))
	return r.err
}

func TestConfigureNetworkAndReseedPlumbing(t *testing.T) {
	rec := &recorder{}
	h := newHarness(t, func(s *Server) { s.Network, s.RNG = rec, rec })
	ctx := ctxT(t)

	n := guestconfig.Network{MAC: "02:00:00:00:00:09", Address: "10.1.0.9/16", Gateway: "10.1.0.1", DNS: []string{"10.1.0.1", "9.9.9.9"}}
	require.NoError(t, h.client.ConfigureNetwork(ctx, n))
	seed := bytes.Repeat([]byte{0, 1, 0xff, '\n'}, 16) // binary-safe: NUL, newline
	require.NoError(t, h.client.Reseed(ctx, seed))
	rec.mu.Lock()
	assert.Equal(t, []guestconfig.Network{n}, rec.nets)
	assert.Equal(t, [][]byte{seed}, rec.seeds)
	rec.mu.Unlock()

	var re *RemoteError
	err := h.client.Reseed(ctx, []byte("short"))
	require.ErrorAs(t, err, &re)
	assert.Equal(t, CodeBadRequest, re.Code)
	err = h.client.Reseed(ctx, make([]byte, MaxSeed+1))
	require.ErrorAs(t, err, &re)
	assert.Equal(t, CodeBadRequest, re.Code)

	// Errors marked BadRequest are the caller's; others are the guest's.
	rec.err = BadRequest(errors.New("address \"x\" is not CIDR"))
	err = h.client.ConfigureNetwork(ctx, n)
	require.ErrorAs(t, err, &re)
	assert.Equal(t, CodeBadRequest, re.Code)
	assert.Equal(t, "guest agent configure_network: address \"x\" is not CIDR", err.Error())
	rec.err = errors.New("eth0: set link up: no such device")
	err = h.client.ConfigureNetwork(ctx, n)
	require.ErrorAs(t, err, &re)
	assert.Equal(t, "", re.Code)
	assert.Contains(t, re.Message, "no such device")
	err = h.client.Reseed(ctx, seed)
	require.ErrorAs(t, err, &re)
	assert.Contains(t, re.Message, "no such device")

	// The session survives failed requests.
	require.NoError(t, h.client.Ping(ctx))
}

func TestConfigureNetworkUnsupported(t *testing.T) {
	h := newHarness(t) // no Network configurer
	var re *RemoteError
	err := h.client.ConfigureNetwork(ctxT(t), guestconfig.Network{Address: "10.0.0.2/24"})
	require.ErrorAs(t, err, &re)
	assert.Contains(t, re.Message, "cannot configure its network")
}

func TestKernelRNGRefusesNonRandomDevice(t *testing.T) {
	p := filepath.Join(t.TempDir(), "not-random")
	require.NoError(t, os.WriteFile(p, nil, 0o644))
	err := KernelRNG{Path: p}.Reseed(make([]byte, 64))
	assert.ErrorIs(t, err, unix.ENOTTY)
	assert.ErrorIs(t, KernelRNG{Path: filepath.Join(t.TempDir(), "none")}.Reseed(make([]byte, 64)), os.ErrNotExist)
}

// nsConfigurer runs the real guest network code inside a test namespace
// (on eth0, one end of a veth pair: this host's kernel has no dummy links).
type nsConfigurer struct{ ns *network.NetNS }

func (c nsConfigurer) ConfigureNetwork(ctx context.Context, n guestconfig.Network) error {
	return c.ns.Do(func() error {
		_, err := guestnet.Configure(ctx, n, guestnet.Options{Prefer: "eth0"})
		if errors.Is(err, guestnet.ErrInvalid) {
			return BadRequest(err)
		}
		return err
	})
}

// TestConfigureNetworkInNetNS drives the real netlink code through the
// agent: a veth link in a throwaway namespace is re-addressed.
func TestConfigureNetworkInNetNS(t *testing.T) {
	nsName := nettest.NewNS(t)
	nettest.Run(t, nsName, "ip", "link", "add", "eth0", "address", "02:00:00:00:00:01", "type", "veth", "peer", "name", "p0")
	nettest.Run(t, nsName, "ip", "link", "set", "p0", "up") // carrier for eth0
	ns, err := network.OpenNetNS(nsName)
	require.NoError(t, err)
	defer ns.Close()
	h := newHarness(t, func(s *Server) { s.Network = nsConfigurer{ns} })
	ctx := ctxT(t)

	t0 := time.Now()
	require.NoError(t, h.client.ConfigureNetwork(ctx, guestconfig.Network{MAC: "02:00:00:00:00:02", Address: "10.55.0.2/24", Gateway: "10.55.0.1"}))
	t.Logf("ConfigureNetwork over the agent (veth link): %s", time.Since(t0))
	assert.Equal(t, "02:00:00:00:00:02\n", nettest.Run(t, nsName, "cat", "/sys/class/net/eth0/address"))
	assert.Contains(t, nettest.Run(t, nsName, "ip", "-o", "-4", "addr", "show", "dev", "eth0"), "10.55.0.2/24")
	assert.Contains(t, nettest.Run(t, nsName, "ip", "route", "show", "default"), "default via 10.55.0.1 dev eth0")

	var re *RemoteError
	err = h.client.ConfigureNetwork(ctx, guestconfig.Network{Address: "10.55.0.3"})
	require.ErrorAs(t, err, &re)
	assert.Equal(t, CodeBadRequest, re.Code)
	assert.Contains(t, nettest.Run(t, nsName, "ip", "-o", "-4", "addr", "show", "dev", "eth0"), "10.55.0.2/24", "unchanged")
}
