package network

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"hypeman/internal/fsutil"
)

// LeasesFile is the name of the lease database inside Config.StateDir.
const LeasesFile = "leases.json"

// ErrSubnetChanged is returned when the configured subnet differs from the
// one existing leases were taken from: running VMs would lose their
// addresses, so the daemon refuses until they are released (or the subnet
// is set back).
var ErrSubnetChanged = errors.New("subnet changed while leases exist")

// ErrCorruptLeases is wrapped when leases.json cannot be trusted.
var ErrCorruptLeases = errors.New("corrupt lease database")

// leasesVersion is the leases.json format this build writes and the newest
// it reads (a file without "version" is version 1).
const leasesVersion = 1

type leaseState struct {
	Version int               `json:"version"`
	Subnet  string            `json:"subnet"`
	Next    string            `json:"next,omitempty"` // where the next search starts
	Leases  map[string]*Lease `json:"leases"`
}

// ipam hands out addresses of one pool and persists every change before it
// is visible. Addresses are searched from a cursor that moves past each new
// lease, so a released address is reused as late as possible (stale ARP
// entries and connections to a deleted VM do not reach its successor).
type ipam struct {
	path string
	pool pool

	mu   sync.Mutex
	st   leaseState
	used map[netip.Addr]string // IP -> instance
	macs map[string]string     // MAC -> instance
}

func openIPAM(dir string, p pool) (*ipam, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("lease dir: %w", err)
	}
	a := &ipam{
		path: filepath.Join(dir, LeasesFile),
		pool: p,
		st:   leaseState{Version: leasesVersion, Subnet: p.prefix.String(), Leases: map[string]*Lease{}},
		used: map[netip.Addr]string{},
		macs: map[string]string{},
	}
	var st leaseState
	_, err := fsutil.ReadVersionedJSON(a.path, leasesVersion, &st)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return a, nil
	case err != nil:
		// An unknown version wraps *fsutil.VersionError (file, version).
		return nil, fmt.Errorf("%w: %w", ErrCorruptLeases, err)
	}
	if st.Subnet != p.prefix.String() {
		if len(st.Leases) > 0 {
			return nil, fmt.Errorf("%w: %s holds %d leases from %s, config says %s",
				ErrSubnetChanged, a.path, len(st.Leases), st.Subnet, p.prefix)
		}
		return a, nil // nothing to keep: start over in the new subnet
	}
	for id, l := range st.Leases {
		ip, err := netip.ParseAddr(l.IP)
		if err != nil || !p.leasable(ip) || l.InstanceID != id || a.used[ip] != "" || a.macs[l.MAC] != "" {
			return nil, fmt.Errorf("%w: %s: bad lease for %q (ip %q mac %q)", ErrCorruptLeases, a.path, id, l.IP, l.MAC)
		}
		a.used[ip] = id
		a.macs[l.MAC] = id
	}
	if st.Leases == nil {
		st.Leases = map[string]*Lease{}
	}
	a.st = st
	return a, nil
}

// allocate returns the lease of id, creating it when absent. fresh is true
// when it was created.
func (a *ipam) allocate(id string, dns []string, now time.Time) (l *Lease, fresh bool, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if l := a.st.Leases[id]; l != nil {
		return l.clone(), false, nil
	}
	start := a.pool.first
	if n, err := netip.ParseAddr(a.st.Next); err == nil && a.pool.leasable(n) {
		start = n
	}
	ip, ok := start, false
	for range a.pool.size() {
		if a.used[ip] == "" {
			ok = true
			break
		}
		ip = a.pool.after(ip)
	}
	if !ok {
		return nil, false, fmt.Errorf("%w %s (%d addresses leased)", ErrExhausted, a.pool.prefix, len(a.st.Leases))
	}
	mac := ""
	for salt := 0; ; salt++ {
		if mac = MACFor(id, salt); a.macs[mac] == "" {
			break
		}
	}
	l = &Lease{
		InstanceID: id,
		Mode:       ModeBridge,
		IP:         ip.String(),
		PrefixLen:  a.pool.prefix.Bits(),
		Gateway:    a.pool.gateway.String(),
		MAC:        mac,
		TAP:        TAPName(ip),
		DNS:        append([]string(nil), dns...),
		CreatedAt:  now.UTC(),
	}
	prevNext := a.st.Next
	a.st.Leases[id] = l
	a.st.Next = a.pool.after(ip).String()
	if err := a.saveLocked(); err != nil {
		delete(a.st.Leases, id)
		a.st.Next = prevNext
		return nil, false, err
	}
	a.used[ip] = id
	a.macs[mac] = id
	return l.clone(), true, nil
}

// release drops the lease of id and returns it (nil when there was none).
func (a *ipam) release(id string) (*Lease, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.st.Leases[id]
	if l == nil {
		return nil, nil
	}
	delete(a.st.Leases, id)
	if err := a.saveLocked(); err != nil {
		a.st.Leases[id] = l
		return nil, err
	}
	delete(a.used, netip.MustParseAddr(l.IP))
	delete(a.macs, l.MAC)
	return l.clone(), nil
}

func (a *ipam) get(id string) (*Lease, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.st.Leases[id]
	if l == nil {
		return nil, false
	}
	return l.clone(), true
}

// list returns all leases ordered by IP.
func (a *ipam) list() []*Lease {
	a.mu.Lock()
	out := make([]*Lease, 0, len(a.st.Leases))
	for _, l := range a.st.Leases {
		out = append(out, l.clone())
	}
	a.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		return netip.MustParseAddr(out[i].IP).Less(netip.MustParseAddr(out[j].IP))
	})
	return out
}

func (a *ipam) saveLocked() error {
	a.st.Version = leasesVersion
	if err := fsutil.WriteJSONAtomic(a.path, &a.st, 0o600); err != nil {
		return fmt.Errorf("save leases: %w", err)
	}
	return nil
}
