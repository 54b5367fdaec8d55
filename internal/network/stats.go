package network

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Counters are the byte counters of an instance's TAP device, seen from
// the VM: the TAP transmits what the VM receives and receives what it sends.
type Counters struct {
	RxBytes uint64 // bytes the VM received
	TxBytes uint64 // bytes the VM sent
}

// TAPCounters reads the counters of the TAP of instanceID (in the namespace
// that holds the bridge). ok is false when the instance has no TAP (no
// lease, user-mode networking, or the TAP is gone).
func (m *Manager) TAPCounters(instanceID string) (c Counters, ok bool, err error) {
	l, found := m.Lease(instanceID)
	if !found || l.TAP == "" || m.Mode() != ModeBridge {
		return Counters{}, false, nil
	}
	err = m.withLinks(func(h *netlink.Handle) error {
		link, err := h.LinkByName(l.TAP)
		if isNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("TAP %s: %w", l.TAP, err)
		}
		st := link.Attrs().Statistics
		if st == nil {
			return nil
		}
		c, ok = Counters{RxBytes: st.TxBytes, TxBytes: st.RxBytes}, true
		return nil
	})
	return c, ok, err
}

// GuestNetwork is the guests' gateway address and subnet as guests see
// them ("" in mode none).
func (m *Manager) GuestNetwork() (gateway, subnet string) {
	switch m.Mode() {
	case ModeBridge:
		return m.pool.gateway.String(), m.pool.prefix.Masked().String()
	case ModeUser:
		return UserGateway, netip.PrefixFrom(netip.MustParseAddr(UserGuestIP), UserPrefixLen).Masked().String()
	}
	return "", ""
}
