package instances

import (
	"context"
	"crypto/rand"
	"fmt"

	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/network"
)

// Network gives instances their network identity: an IP + MAC lease and,
// in bridge mode, a TAP device. Optional: without it VMs have no NIC.
type Network interface {
	Allocate(ctx context.Context, instanceID string) (*network.Lease, error)
	Lease(instanceID string) (*network.Lease, bool)
	Release(ctx context.Context, instanceID string) error
	// CreateTAP creates (or re-adopts) the TAP with exactly these limits.
	CreateTAP(ctx context.Context, l *network.Lease, bw network.Bandwidth) error
	DeleteTAP(ctx context.Context, l *network.Lease) error
	Mode() network.Mode
}

// NetworkInfo is the instance's network as the API shows it.
type NetworkInfo struct {
	Enabled bool   `json:"enabled"`
	IP      string `json:"ip,omitempty"`
	MAC     string `json:"mac,omitempty"`
}

// guestNetReconfigurer is implemented by agent connections that can
// re-address the guest (forks need their own MAC/IP) and reseed its RNG.
type guestNetReconfigurer interface {
	ConfigureNetwork(ctx context.Context, n guestconfig.Network) error
	Reseed(ctx context.Context, seed []byte) error
}

func (m *Manager) networkEnabled(meta Metadata) bool {
	return m.cfg.Network != nil && !meta.NetworkDisabled
}

// leaseFor allocates (or reuses) the instance's lease and makes sure its
// TAP device exists with the instance's bandwidth limits. nil lease = no
// network for this instance.
func (m *Manager) leaseFor(ctx context.Context, meta Metadata) (*network.Lease, error) {
	if !m.networkEnabled(meta) {
		return nil, nil
	}
	l, err := m.cfg.Network.Allocate(ctx, meta.ID)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	if l.TAP != "" {
		if err := m.cfg.Network.CreateTAP(ctx, l, meta.Limits.bandwidth()); err != nil {
			return nil, fmt.Errorf("network: %w", err)
		}
	}
	return l, nil
}

// reshapeTAP re-applies a re-adopted VM's bandwidth limits to its TAP (a
// previous daemon may have died before applying them, or applied others).
func (m *Manager) reshapeTAP(ctx context.Context, meta Metadata) {
	if !m.networkEnabled(meta) {
		return
	}
	l, ok := m.cfg.Network.Lease(meta.ID)
	if !ok || l.TAP == "" {
		return
	}
	if err := m.cfg.Network.CreateTAP(ctx, l, meta.Limits.bandwidth()); err != nil {
		m.log.Warn("re-apply bandwidth limits", "id", meta.ID, "tap", l.TAP, "err", err)
		m.logf(meta.ID, "re-adopted, but re-applying the bandwidth limits failed: %v", err)
	}
}

// releaseNetwork frees an instance's lease and TAP (VM ended for good).
func (m *Manager) releaseNetwork(id string) {
	if m.cfg.Network == nil {
		return
	}
	if err := m.cfg.Network.Release(context.Background(), id); err != nil {
		m.log.Warn("release network lease", "id", id, "err", err)
	}
}

// dropTAP deletes the TAP but keeps the lease (standby: the saved guest
// keeps its address, the TAP is recreated on restore).
func (m *Manager) dropTAP(id string) {
	if m.cfg.Network == nil {
		return
	}
	if l, ok := m.cfg.Network.Lease(id); ok && l.TAP != "" {
		if err := m.cfg.Network.DeleteTAP(context.Background(), l); err != nil {
			m.log.Warn("delete tap", "id", id, "err", err)
		}
	}
}

// networkInfo builds the API view from the current lease.
func (m *Manager) networkInfo(meta Metadata) *NetworkInfo {
	if m.cfg.Network == nil {
		return nil
	}
	ni := &NetworkInfo{Enabled: !meta.NetworkDisabled}
	if l, ok := m.cfg.Network.Lease(meta.ID); ok {
		ni.IP, ni.MAC = l.IP, l.MAC
	}
	return ni
}

// GuestIP returns the address of a live instance's guest (for ingress and
// health checks).
func (m *Manager) GuestIP(ctx context.Context, ref string) (string, error) {
	e, err := m.resolve(ref)
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	meta, live := e.meta, e.live != nil
	e.mu.Unlock()
	if !live {
		return "", &TransitionError{Action: "connect to", State: m.currentState(ctx, e), Allowed: nil}
	}
	if !m.networkEnabled(meta) {
		return "", fmt.Errorf("%w: instance %s has no network", ErrInvalid, meta.Name)
	}
	l, ok := m.cfg.Network.Lease(meta.ID)
	if !ok {
		return "", fmt.Errorf("instance %s has no network lease", meta.Name)
	}
	return l.IP, nil
}

// readdressGuest tells a restored guest its (new) address and MAC and
// reseeds its RNG, so a fork never shares the source's identity or random
// stream. Failures are logged: the VM runs, but may clash with its source.
func (m *Manager) readdressGuest(ctx context.Context, e *entry, lv *liveVM) {
	e.mu.Lock()
	meta := e.meta
	e.mu.Unlock()
	c, err := m.agentFor(ctx, e, lv)
	if err != nil {
		m.logf(meta.ID, "fork: cannot reach the guest agent to re-address it: %v", err)
		return
	}
	rc, ok := c.(guestNetReconfigurer)
	if !ok {
		m.logf(meta.ID, "fork: the guest agent cannot re-address the guest")
		return
	}
	seed := make([]byte, 64)
	if _, err := rand.Read(seed); err == nil {
		if err := rc.Reseed(ctx, seed); err != nil {
			m.logf(meta.ID, "fork: reseed guest RNG: %v", err)
		}
	}
	if !m.networkEnabled(meta) {
		return
	}
	l, ok := m.cfg.Network.Lease(meta.ID)
	if !ok {
		return
	}
	if err := rc.ConfigureNetwork(ctx, *l.GuestConfig()); err != nil {
		m.logf(meta.ID, "fork: re-address guest to %s: %v", l.IP, err)
		return
	}
	m.logf(meta.ID, "guest re-addressed to %s (%s)", l.IP, l.MAC)
}
