package resources

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
)

// Demand is what one instance holds (or asks to hold). Running says
// whether it holds the running resources (cpu, memory, network, disk I/O):
// true while a VMM exists for it. The disk is held whatever the state.
type Demand struct {
	InstanceID   string
	InstanceName string
	Running      bool
	CPU          int
	// MemoryBytes is the whole guest memory (size + hotplug_size).
	MemoryBytes int64
	// DiskBytes is the instance's provisioned disk of its own (the writable
	// overlay, plus volume overlays once volumes attach).
	DiskBytes int64
	// VolumeBytes is the size of the volumes the instance mounts: shown
	// in its allocation, but counted in the disk total once, by the scan
	// of the volumes dir (a volume mounted by two instances is one file).
	VolumeBytes        int64
	NetworkDownloadBps int64
	NetworkUploadBps   int64
	DiskIOBps          int64
}

// Amount is how much of k the demand holds.
func (d Demand) Amount(k Kind) int64 {
	if k == Disk {
		return d.DiskBytes
	}
	if !d.Running {
		return 0
	}
	switch k {
	case CPU:
		return int64(d.CPU)
	case Memory:
		return d.MemoryBytes
	case Network:
		// Download and upload share one physical link.
		return max(d.NetworkDownloadBps, d.NetworkUploadBps)
	case DiskIO:
		return d.DiskIOBps
	}
	return 0
}

// ReleaseKind says what Release gives back.
type ReleaseKind int

const (
	// ReleaseRunning: the VMM ended (stop, exit, crash, standby, failed
	// launch); the disk stays held.
	ReleaseRunning ReleaseKind = iota
	// ReleaseAll: the instance is gone (delete, failed create or fork).
	ReleaseAll
)

// InsufficientError is an admission refusal (API 409
// insufficient_resources).
type InsufficientError struct {
	Resource Kind
	// Asked is what the instance asked for; Free what the others leave of
	// Limit (the effective limit = Capacity × Ratio).
	Asked, Free, Limit, Capacity int64
	Ratio                        float64
}

func (e *InsufficientError) Error() string {
	f := func(v int64) string { return formatAmount(e.Resource, v, e.Limit) }
	return fmt.Sprintf("insufficient %s: asked %s, %s free of %s (capacity %s, oversubscription %.1f; set %s to allow more)",
		e.Resource, f(e.Asked), f(e.Free), f(e.Limit), f(e.Capacity), e.Ratio, RatioKeys[e.Resource])
}

// formatAmount renders an amount of k for people, bytes in the unit that
// suits scale (so the numbers of one message compare at a glance).
func formatAmount(k Kind, v, scale int64) string {
	switch k {
	case CPU:
		return fmt.Sprintf("%d vCPUs", v)
	case Network:
		return fmt.Sprintf("%.1f Mbps", float64(v)*8/1e6)
	case DiskIO:
		return fmt.Sprintf("%.1f MB/s", float64(v)/(1<<20))
	}
	if scale < 1<<30 {
		return fmt.Sprintf("%.1f MiB", float64(v)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(v)/(1<<30))
}

// Config configures a Ledger.
type Config struct {
	Settings Settings
	Host     Host
	// Disk measures what the data dir holds besides instance overlays
	// (nil = nothing). Its result counts in the disk allocation.
	Disk   *DiskScanner
	Logger *slog.Logger
}

// Ledger is the allocation ledger and admission controller.
type Ledger struct {
	settings Settings
	host     Host
	disk     *DiskScanner
	log      *slog.Logger

	mu    sync.Mutex
	holds map[string]Demand
}

// NewLedger makes an empty ledger.
func NewLedger(cfg Config) (*Ledger, error) {
	if err := cfg.Settings.Validate(); err != nil {
		return nil, err
	}
	for _, k := range Kinds {
		if _, ok := cfg.Host[k]; !ok {
			return nil, fmt.Errorf("resources: no capacity for %s", k)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Ledger{settings: cfg.Settings, host: cfg.Host, disk: cfg.Disk, log: cfg.Logger, holds: map[string]Demand{}}, nil
}

// Limit is the effective limit of k: capacity × ratio.
func (l *Ledger) Limit(k Kind) int64 {
	v := float64(l.host[k].Value) * l.settings.ratio(k)
	if v >= math.MaxInt64/2 {
		return math.MaxInt64 / 2
	}
	return int64(v)
}

// Admit checks that d fits beside everything else held and, if so, holds
// it for d.InstanceID (replacing that instance's previous hold) in one
// step: two admissions racing for the last room never both succeed.
// A refusal is an *InsufficientError for the first resource that does not
// fit (cpu, memory, disk, network, disk_io order); nothing changes then.
func (l *Ledger) Admit(ctx context.Context, d Demand) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	scanned := l.scannedDisk(ctx)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range Kinds {
		asked := d.Amount(k)
		if asked <= 0 {
			continue
		}
		others := l.allocatedLocked(k, d.InstanceID)
		if k == Disk {
			others += scanned
		}
		limit := l.Limit(k)
		if others+asked > limit {
			return &InsufficientError{Resource: k, Asked: asked, Free: max(limit-others, 0), Limit: limit,
				Capacity: l.host[k].Value, Ratio: l.settings.ratio(k)}
		}
	}
	l.holds[d.InstanceID] = d
	return nil
}

// Hold records d without checking (instances found at daemon start: they
// already run, refusing them would change nothing).
func (l *Ledger) Hold(d Demand) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.holds[d.InstanceID] = d
}

// Release gives back what instanceID holds: its running resources, or
// everything. Releasing what is not held is a no-op.
func (l *Ledger) Release(instanceID string, what ReleaseKind) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d, ok := l.holds[instanceID]
	if !ok {
		return
	}
	if what == ReleaseAll {
		delete(l.holds, instanceID)
		return
	}
	d.Running = false
	l.holds[instanceID] = d
}

// Held returns instanceID's hold.
func (l *Ledger) Held(instanceID string) (Demand, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d, ok := l.holds[instanceID]
	return d, ok
}

func (l *Ledger) allocatedLocked(k Kind, except string) int64 {
	var n int64
	for id, d := range l.holds {
		if id != except {
			n += d.Amount(k)
		}
	}
	return n
}

func (l *Ledger) scannedDisk(ctx context.Context) int64 {
	if l.disk == nil {
		return 0
	}
	b, err := l.disk.Usage(ctx)
	if err != nil {
		l.log.Warn("resources: disk usage scan", "err", err)
	}
	return b.outsideInstances()
}

// ResourceStatus is one resource in GET /resources.
type ResourceStatus struct {
	Type           Kind
	Capacity       int64
	EffectiveLimit int64
	Allocated      int64
	Available      int64
	Ratio          float64
	Source         string
}

// Status is GET /resources.
type Status struct {
	Resources map[Kind]ResourceStatus
	Disk      DiskBreakdown
	// Allocations are the instances' holds, by name.
	Allocations []Demand
}

// Status reports capacity, limits, allocation and the disk breakdown.
// Disk allocated is the instances' provisioned disks plus the scanned
// images, registry blobs, volumes and snapshots.
func (l *Ledger) Status(ctx context.Context) (*Status, error) {
	var bd DiskBreakdown
	if l.disk != nil {
		var err error
		if bd, err = l.disk.Refresh(ctx); err != nil {
			return nil, err
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	st := &Status{Resources: map[Kind]ResourceStatus{}, Disk: bd}
	for _, k := range Kinds {
		alloc := l.allocatedLocked(k, "")
		if k == Disk {
			alloc += bd.outsideInstances()
		}
		limit := l.Limit(k)
		st.Resources[k] = ResourceStatus{Type: k, Capacity: l.host[k].Value, EffectiveLimit: limit, Allocated: alloc,
			Available: max(limit-alloc, 0), Ratio: l.settings.ratio(k), Source: l.host[k].Source}
	}
	for _, d := range l.holds {
		st.Allocations = append(st.Allocations, d)
	}
	slices.SortFunc(st.Allocations, func(a, b Demand) int {
		return cmp.Or(cmp.Compare(a.InstanceName, b.InstanceName), cmp.Compare(a.InstanceID, b.InstanceID))
	})
	return st, nil
}
