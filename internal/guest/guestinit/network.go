package guestinit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"hypeman/internal/guest/agent"
	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/guest/guestnet"
)

// nicWait bounds the boot-time wait for the NIC. virtio_net registers it
// while the module loads, so it is normally there at once.
const nicWait = 2 * time.Second

// reannounce is the delay of the second gratuitous ARP.
const reannounce = time.Second

// guestNetwork is the instance's network as the init manages it. The boot
// configuration and the agent's re-addressing (after a fork) share it, so
// they are serialized and the second one finds the NIC the first one used.
type guestNetwork struct {
	log      *slog.Logger
	con      *Console
	mounts   *mounter
	hostname string

	mu   sync.Mutex
	link string // the NIC configured last ("" before)
}

// boot brings up loopback and, when the config has a network, configures
// the NIC before the program starts (so a server can bind its address).
//
// A failure is not fatal: it is printed on the console and the program runs
// anyway. The agent still works (it does not use the network), so the host
// can see the problem and repair it with ConfigureNetwork, and a program
// that does not need the network is not stopped by a network problem.
func (g *guestNetwork) boot(ctx context.Context, n *guestconfig.Network) {
	if err := guestnet.LoopbackUp(); err != nil {
		g.log.Error("loopback", "err", err)
		g.con.Line("hypeman-init: loopback not configured: " + err.Error())
	}
	if n == nil {
		return
	}
	t0 := time.Now()
	g.mu.Lock()
	res, err := g.apply(ctx, *n, nicWait)
	g.mu.Unlock()
	if err != nil {
		g.log.Error("network", "err", err)
		g.con.Line("hypeman-init: network not configured: " + err.Error())
		return
	}
	g.log.Info("network configured", "link", res.Link, "mac", res.MAC, "address", n.Address,
		"gateway", n.Gateway, "took", time.Since(t0))
}

// apply configures the NIC; g.mu must be held.
func (g *guestNetwork) apply(ctx context.Context, n guestconfig.Network, wait time.Duration) (guestnet.Result, error) {
	res, err := guestnet.Configure(ctx, n, guestnet.Options{Prefer: g.link, LinkWait: wait, Reannounce: reannounce})
	if res.Link != "" {
		g.link = res.Link
	}
	if err != nil {
		return res, err
	}
	if res.AnnounceErr != nil {
		g.log.Warn("gratuitous ARP", "err", res.AnnounceErr)
	}
	return res, nil
}

// ConfigureNetwork implements agent.NetworkConfigurer: it re-addresses the
// NIC and rewrites /etc/hosts and /etc/resolv.conf (the latter only when n
// has DNS servers; otherwise the current file stays).
func (g *guestNetwork) ConfigureNetwork(ctx context.Context, n guestconfig.Network) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	res, err := g.apply(ctx, n, 0)
	if err != nil {
		if errors.Is(err, guestnet.ErrInvalid) {
			return agent.BadRequest(err)
		}
		return err
	}
	files := EtcFiles(g.hostname, &n)
	delete(files, "hostname")
	for name, content := range files {
		if err := g.mounts.setEtcFile(name, content); err != nil {
			return fmt.Errorf("network configured on %s, but: %w", res.Link, err)
		}
	}
	return nil
}
