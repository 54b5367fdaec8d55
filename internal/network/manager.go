package network

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
)

// ErrDisabled is returned by Allocate when the mode is none.
var ErrDisabled = errors.New("networking is disabled")

// Capability is the networking mode in use and why (GET /capabilities).
type Capability struct {
	Mode   Mode   `json:"mode"`
	Reason string `json:"reason,omitempty"`
}

// Manager owns the daemon's VM networking. It is safe for concurrent use.
type Manager struct {
	cfg Config
	log *slog.Logger
	ns  *NetNS
	dns []string

	capMu sync.Mutex
	cap   Capability

	// bridge mode only
	pool    pool
	ipam    *ipam
	setupMu sync.Mutex // serializes Setup and firewall changes
	// published is the ingress part of the firewall (PublishPorts); kept so
	// a repeated Setup renders the same rules. Guarded by setupMu.
	published published
}

// New decides the networking mode and, for bridge mode, sets the bridge up
// (Setup) and loads the leases. Mode auto means bridge when the process has
// CAP_NET_ADMIN, /dev/net/tun works and Setup succeeds, else user; the
// reason is in Capability. Configuration and data problems (bad subnet, a
// subnet or bridge name already in use, leases from another subnet, a
// corrupt lease file) are errors in every mode: falling back would hide
// them and strand running VMs.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ns, err := OpenNetNS(cfg.NetNS)
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, log: logger.With("component", "network"), ns: ns}
	switch cfg.Mode {
	case ModeNone:
		m.cap = Capability{Mode: ModeNone, Reason: "networking disabled by configuration"}
	case ModeUser:
		m.cap = Capability{Mode: ModeUser, Reason: "user-mode networking selected by configuration"}
	case ModeBridge:
		if err := m.initBridge(ctx); err != nil {
			ns.Close()
			return nil, err
		}
	case ModeAuto:
		if reason := bridgeUnavailable(); reason != "" {
			m.cap = Capability{Mode: ModeUser, Reason: reason}
			break
		}
		if err := m.initBridge(ctx); err != nil {
			if isConfigError(err) {
				ns.Close()
				return nil, err
			}
			m.cap = Capability{Mode: ModeUser, Reason: "bridge networking failed: " + err.Error()}
			m.ipam = nil
		}
	}
	if m.cap.Mode == ModeUser {
		m.dns = []string{UserDNS}
	}
	m.log.Info("networking mode", "mode", m.cap.Mode, "reason", m.cap.Reason)
	return m, nil
}

func isConfigError(err error) bool {
	for _, e := range []error{ErrInvalidConfig, ErrSubnetConflict, ErrBridgeInUse, ErrSubnetChanged, ErrCorruptLeases} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// BridgeUnavailable returns why bridge mode cannot work in this process
// (no CAP_NET_ADMIN, no /dev/net/tun), or "" when mode auto will try it.
// hypemand uses it to announce host network changes before making them.
func BridgeUnavailable() string { return bridgeUnavailable() }

// bridgeUnavailable returns why bridge mode cannot work in this process, or
// "" when it may.
func bridgeUnavailable() string {
	if !hasNetAdmin() {
		return "bridge networking needs root (CAP_NET_ADMIN); using QEMU user-mode networking"
	}
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return "cannot open /dev/net/tun (" + err.Error() + "); using QEMU user-mode networking"
	}
	f.Close()
	return ""
}

// hasNetAdmin reports whether CAP_NET_ADMIN (bit 12) is in the effective set.
func hasNetAdmin() bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return os.Geteuid() == 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<12) != 0
		}
	}
	return os.Geteuid() == 0
}

func (m *Manager) initBridge(ctx context.Context) error {
	p, err := newPool(m.cfg.Subnet)
	if err != nil {
		return err
	}
	m.pool = p
	if m.ipam, err = openIPAM(m.cfg.StateDir, p); err != nil {
		return err
	}
	m.dns = append([]string(nil), m.cfg.DNS...)
	if len(m.dns) == 0 {
		m.dns = hostResolvers(defaultResolvConfs())
	}
	m.cap = Capability{Mode: ModeBridge}
	if err := m.Setup(ctx); err != nil {
		return err
	}
	// Setup proved the bridge; prove TAP creation too with a throwaway
	// non-persistent device (it vanishes when its file is closed).
	if err := m.withLinks(func(h *netlink.Handle) error {
		return h.LinkAdd(&netlink.Tuntap{Mode: netlink.TUNTAP_MODE_TAP, NonPersist: true, Flags: netlink.TUNTAP_NO_PI})
	}); err != nil {
		return fmt.Errorf("TAP probe: %w", err)
	}
	return nil
}

// Capability reports the mode in use and why.
func (m *Manager) Capability() Capability {
	m.capMu.Lock()
	defer m.capMu.Unlock()
	return m.cap
}

// Mode is Capability().Mode.
func (m *Manager) Mode() Mode { return m.Capability().Mode }

// Setup idempotently prepares bridge networking: the bridge with the
// gateway address (first host of the subnet) and a fixed MAC, up; bridge
// port isolation on every TAP of ours already attached (VMs that outlived a
// daemon restart); net.ipv4.ip_forward=1; the nftables table "inet hypeman"
// with outbound NAT and the guest filters (see firewall.nftRuleset). New
// calls it; call it again to repair (e.g. after someone deleted the bridge).
// A no-op in other modes.
func (m *Manager) Setup(ctx context.Context) error {
	if m.Mode() != ModeBridge {
		return nil
	}
	m.setupMu.Lock()
	defer m.setupMu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	start := time.Now()
	if err := m.setupBridge(); err != nil {
		return err
	}
	if err := m.isolateAllTAPs(); err != nil {
		return err
	}
	if err := m.enableForwarding(); err != nil {
		return err
	}
	fw := "outbound NAT and guest isolation via nftables table inet " + NFTTable
	if _, err := exec.LookPath("nft"); err != nil {
		fw = "guests isolated from each other on the bridge only: no outbound NAT and no host firewall (nft not found)"
		m.log.Warn("nft not found: guests can reach services on the host but nothing beyond it; install nftables")
	} else if err := m.nft(ctx, m.firewallLocked().nftRuleset()); err != nil {
		return err
	}
	reason := fmt.Sprintf("bridge %s, gateway %s/%d, %s", m.cfg.Bridge, m.pool.gateway, m.pool.prefix.Bits(), fw)
	if m.cfg.NetNS != "" {
		reason += ", in network namespace " + m.cfg.NetNS
	}
	if len(m.dns) == 0 {
		reason += "; no DNS servers found for guests (set network DNS in the config)"
	}
	m.capMu.Lock()
	m.cap.Reason = reason
	m.capMu.Unlock()
	m.log.Debug("bridge ready", "bridge", m.cfg.Bridge, "subnet", m.pool.prefix, "took", time.Since(start))
	return nil
}

// Teardown removes what Setup and CreateTAP made: every TAP device of a
// lease or named like ours on the bridge, their ifb devices, the bridge,
// and the nftables table (NAT and guest filters). Leases are kept (VMs
// restarted later get the same addresses). For tests and uninstall; the
// daemon does not call it on shutdown because VMs outlive it. ip_forward is
// left as it is.
func (m *Manager) Teardown(ctx context.Context) error {
	if m.Mode() != ModeBridge {
		return nil
	}
	var errs []error
	taps, err := m.orphanTAPs(nil)
	errs = append(errs, err)
	for _, l := range m.ipam.list() {
		taps = append(taps, l.TAP)
	}
	for _, t := range taps {
		errs = append(errs, m.deleteLink(t))
	}
	ifbs, err := m.orphanIFBs(nil)
	errs = append(errs, err)
	for _, d := range ifbs {
		errs = append(errs, m.deleteLink(d))
	}
	errs = append(errs, m.deleteLink(m.cfg.Bridge))
	if _, err := exec.LookPath("nft"); err == nil {
		errs = append(errs, m.nft(ctx, nftRemove()))
	}
	return errors.Join(errs...)
}

// Close releases the manager's namespace handle. Devices and leases stay.
func (m *Manager) Close() error { return m.ns.Close() }

// DNS returns the DNS servers handed to guests.
func (m *Manager) DNS() []string { return append([]string(nil), m.dns...) }

// Allocate returns the lease of an instance, creating it on first use. It
// is idempotent: the same instance gets the same lease until Release. In
// user mode every instance gets slirp's fixed addresses (each VM has its
// own private slirp network) and nothing is persisted. Errors: ErrDisabled
// (mode none), ErrExhausted (wrapped).
func (m *Manager) Allocate(ctx context.Context, instanceID string) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if instanceID == "" || len(instanceID) > 256 {
		return nil, fmt.Errorf("%w: instance id %q", ErrInvalidConfig, instanceID)
	}
	switch m.Mode() {
	case ModeNone:
		return nil, ErrDisabled
	case ModeUser:
		return &Lease{
			InstanceID: instanceID, Mode: ModeUser,
			IP: UserGuestIP, PrefixLen: UserPrefixLen, Gateway: UserGateway,
			MAC: MACFor(instanceID, 0), DNS: []string{UserDNS}, CreatedAt: time.Now().UTC(),
		}, nil
	}
	l, fresh, err := m.ipam.allocate(instanceID, m.dns, time.Now())
	if err != nil {
		return nil, err
	}
	if fresh {
		m.log.Info("lease allocated", "instance", instanceID, "ip", l.IP, "mac", l.MAC, "tap", l.TAP)
	}
	l.DNS = m.DNS() // the current servers, even for an older lease
	return l, nil
}

// Lease returns the bridge-mode lease of an instance.
func (m *Manager) Lease(instanceID string) (*Lease, bool) {
	if m.ipam == nil {
		return nil, false
	}
	l, ok := m.ipam.get(instanceID)
	if ok {
		l.DNS = m.DNS()
	}
	return l, ok
}

// Leases lists the bridge-mode leases ordered by IP.
func (m *Manager) Leases() []*Lease {
	if m.ipam == nil {
		return nil
	}
	return m.ipam.list()
}

// Release deletes the instance's TAP device (if any) and frees its lease.
// Releasing an instance without a lease is not an error. When the TAP
// cannot be deleted the lease is kept, so its address is not handed to
// another VM while the device still exists.
func (m *Manager) Release(ctx context.Context, instanceID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if m.ipam == nil {
		return nil
	}
	l, ok := m.ipam.get(instanceID)
	if !ok {
		return nil
	}
	if err := m.DeleteTAP(ctx, l); err != nil {
		return fmt.Errorf("release %s: %w", instanceID, err)
	}
	if _, err := m.ipam.release(instanceID); err != nil {
		return fmt.Errorf("release %s: %w", instanceID, err)
	}
	m.log.Info("lease released", "instance", instanceID, "ip", l.IP)
	return nil
}

// CreateTAP creates the lease's TAP device (persistent, owned by root,
// attached to the bridge as an isolated port, up), adopting an existing one
// of the same name, and gives it exactly the bandwidth limits bw (see
// Bandwidth; an adopted TAP loses limits it had before). Every path that
// gives a VM its TAP (create, start, restore, fork) comes through here;
// Setup isolates the TAPs of VMs that were re-adopted. Calling it again on a
// live VM's TAP is safe: it re-applies the limits. A no-op for leases
// without a TAP (user mode), where limits cannot be enforced: bw must be
// zero there.
func (m *Manager) CreateTAP(ctx context.Context, l *Lease, bw Bandwidth) error {
	if l == nil || l.TAP == "" {
		if !bw.IsZero() {
			return fmt.Errorf("bandwidth limits need bridge networking (mode is %s)", m.Mode())
		}
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if m.Mode() != ModeBridge {
		return fmt.Errorf("create TAP %s: networking mode is %s", l.TAP, m.Mode())
	}
	start := time.Now()
	fresh, err := m.createTAP(l)
	if err != nil {
		return err
	}
	if err := m.shape(ctx, l.TAP, bw, fresh); err != nil {
		if fresh {
			_ = m.deleteLink(l.TAP)
		}
		return err
	}
	m.log.Debug("TAP ready", "tap", l.TAP, "instance", l.InstanceID, "download_bps", bw.Download, "upload_bps", bw.Upload,
		"took", time.Since(start))
	return nil
}

// DeleteTAP deletes the lease's TAP device and its ifb (upload shaping); a
// missing device is not an error. A VMM still holding the device loses its
// network.
func (m *Manager) DeleteTAP(ctx context.Context, l *Lease) error {
	if l == nil || l.TAP == "" || m.Mode() != ModeBridge {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.Join(m.deleteLink(ifbName(l.TAP)), m.deleteLink(l.TAP))
}

// Prune releases the leases of instances for which keep returns false and
// deletes TAP devices on the bridge (and ifb devices) that are named like
// ours but belong to no lease (left by a crash between CreateTAP and
// Release). The daemon calls it at start, after re-adopting its VMs. It
// returns the released instance IDs.
func (m *Manager) Prune(ctx context.Context, keep func(instanceID string) bool) ([]string, error) {
	if m.Mode() != ModeBridge {
		return nil, nil
	}
	var released []string
	var errs []error
	for _, l := range m.ipam.list() {
		if keep(l.InstanceID) {
			continue
		}
		if err := m.Release(ctx, l.InstanceID); err != nil {
			errs = append(errs, err)
			continue
		}
		released = append(released, l.InstanceID)
	}
	names := map[string]bool{}
	for _, l := range m.ipam.list() {
		names[l.TAP] = true
	}
	orphans, err := m.orphanTAPs(names)
	errs = append(errs, err)
	for _, t := range orphans {
		m.log.Info("deleting orphan TAP", "tap", t)
		errs = append(errs, m.deleteLink(t))
	}
	ifbs, err := m.orphanIFBs(names)
	errs = append(errs, err)
	for _, d := range ifbs {
		m.log.Info("deleting orphan ifb", "ifb", d)
		errs = append(errs, m.deleteLink(d))
	}
	return released, errors.Join(errs...)
}

// NetNSPath is the network namespace file the manager works in, or "" for
// the daemon's own namespace.
func (m *Manager) NetNSPath() string { return m.ns.path }

// InNetNS runs fn on an OS thread that is inside the manager's network
// namespace (directly when there is none). A process started from fn
// (exec.Cmd.Start) is forked from that thread and so lives in the
// namespace: this is how a VMM must be started when NetNS is set, because
// a TAP device can only be opened from its own namespace.
func (m *Manager) InNetNS(fn func() error) error { return m.ns.Do(fn) }

// WrapCommand prefixes argv so that it runs in the manager's namespace
// (nsenter --net=PATH --); argv is returned unchanged without one. nsenter
// execs the command, so the PID is the command's own. InNetNS needs no
// extra binary and is preferred; this is for callers that cannot hook
// process start.
func (m *Manager) WrapCommand(argv []string) []string {
	if m.ns.path == "" {
		return argv
	}
	return append([]string{"nsenter", "--net=" + m.ns.path, "--"}, argv...)
}

// DialContext connects from inside the manager's namespace, where guest
// addresses are routable. addr must be an IP literal and port.
func (m *Manager) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return m.ns.DialContext(ctx, network, addr)
}

// Listen opens a listener inside the manager's namespace.
func (m *Manager) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	return m.ns.Listen(ctx, network, addr)
}
