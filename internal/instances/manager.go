package instances

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/fsutil"
	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/hypervisor"
	"hypeman/internal/instances/state"
	"hypeman/internal/paths"
	"hypeman/internal/tags"
)

// ImageInfo is what the manager needs to know about a ready image.
type ImageInfo struct {
	Name       string
	Digest     string
	DiskPath   string
	FSType     string // "erofs" or "ext4"
	Entrypoint []string
	Cmd        []string
	Env        []string // KEY=VALUE, image order
	WorkingDir string
	User       string
	Platform   string // os/arch[/variant]
}

// Images resolves image references for instances.
type Images interface {
	// Resolve returns a ready image, pulling and converting it first when
	// the store does not have it yet.
	Resolve(ctx context.Context, ref string) (ImageInfo, error)
	// ResolveLocal returns a ready image the store already holds (waiting
	// for a pull of it that is under way) and never starts a pull: an
	// image the store lacks, or whose last pull failed, is an error
	// matching ErrPullNotAllowed.
	ResolveLocal(ctx context.Context, ref string) (ImageInfo, error)
}

// Metrics receives operation timings (optional).
type Metrics interface {
	ObserveOperation(op string, d time.Duration, err error)
	ObserveTimeToRunning(d time.Duration)
}

type noMetrics struct{}

func (noMetrics) ObserveOperation(string, time.Duration, error) {}
func (noMetrics) ObserveTimeToRunning(time.Duration)            {}

// Boot is the kernel and initrd every instance boots.
type Boot struct {
	KernelPath string
	InitrdPath string
	// Cmdline is the base kernel command line; the hypervisor driver adds
	// accelerator-specific arguments.
	Cmdline string
}

// DefaultCmdline is the base kernel command line for guests.
const DefaultCmdline = "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init"

// Config configures a Manager.
type Config struct {
	Paths      paths.Paths
	Hypervisor hypervisor.Hypervisor
	Images     Images
	Boot       Boot
	Agent      GuestAgent // optional: graceful stop through the guest agent
	Network    Network    // optional: nil = VMs without a NIC
	// Events is the lifecycle bus: the manager publishes every transition
	// on it and WaitForState subscribes to it. Required.
	Events  *events.Bus
	Logger  *slog.Logger
	Metrics Metrics // optional
	// GuestStopTimeout is how long the guest waits between SIGTERM and
	// SIGKILL of the program on a graceful stop (default 10s).
	GuestStopTimeout time.Duration
	// SnapshotCompression is the server default for how standby and
	// snapshot memory state is stored (zero value: uncompressed); instance
	// policies and requests override it (see compression.go).
	SnapshotCompression hypervisor.Compression
	// StepHook, when set, is called at each step of multi-step operations
	// ("standby:paused", "standby:saved", "standby:committed",
	// "restore:loaded", "restore:committed"). Crash tests use it to kill the
	// daemon at an exact point; production leaves it nil.
	StepHook func(step string)
	// RequireAgent makes Running wait for the agent-ready marker too
	// (unless the instance sets skip_guest_agent).
	RequireAgent bool
	// Defaults for create requests.
	DefaultSize        string
	DefaultVCPUs       int
	DefaultOverlaySize string
}

// Manager owns all instances under Paths.InstancesDir().
type Manager struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	entries  map[string]*entry
	reserved map[string]bool // names being created

	restartPending atomic.Pointer[func(id string) bool]
	policyChanged  atomic.Pointer[func(id string)]

	wg     sync.WaitGroup // watchers
	closed chan struct{}

	// Delayed standby compressions: jobs counts scheduled ones,
	// compressSlot lets one convert at a time.
	jobs         sync.WaitGroup
	compressSlot chan struct{}
}

// entry is one instance in memory.
type entry struct {
	op sync.Mutex // serializes lifecycle operations on this instance

	mu        sync.Mutex // guards the fields below
	meta      Metadata
	live      *liveVM
	attachErr string // re-adoption failed for a live VMM (state Unknown)
	deleted   bool
	compress  *compressJob // delayed standby compression, if scheduled
}

const (
	metadataFile = "metadata.json"
	overlayFile  = "overlay.ext4"
	configFile   = "config.raw"
	agentSock    = "agent.sock"
	hypemanLog   = "hypeman.log"
)

// New loads every instance from disk and re-adopts running VMMs. Instances
// whose VMM died while the daemon was away are reconciled to Stopped with
// the exit information their guest printed.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Hypervisor == nil || cfg.Images == nil || cfg.Events == nil {
		return nil, errors.New("instances: hypervisor, images and events are required")
	}
	if cfg.Metrics == nil {
		cfg.Metrics = noMetrics{}
	}
	if cfg.GuestStopTimeout <= 0 {
		cfg.GuestStopTimeout = 10 * time.Second
	}
	if cfg.DefaultSize == "" {
		cfg.DefaultSize = "1GB"
	}
	if cfg.DefaultVCPUs == 0 {
		cfg.DefaultVCPUs = 2
	}
	if cfg.DefaultOverlaySize == "" {
		cfg.DefaultOverlaySize = "10GB"
	}
	if cfg.Boot.Cmdline == "" {
		cfg.Boot.Cmdline = DefaultCmdline
	}
	if err := cfg.SnapshotCompression.Validate(); err != nil {
		return nil, fmt.Errorf("instances: server snapshot compression: %w", err)
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, entries: map[string]*entry{}, reserved: map[string]bool{}, closed: make(chan struct{}),
		compressSlot: make(chan struct{}, 1)}
	if err := os.MkdirAll(cfg.Paths.InstancesDir(), 0o755); err != nil {
		return nil, fmt.Errorf("instances dir: %w", err)
	}
	if err := m.load(ctx); err != nil {
		return nil, err
	}
	// Snapshots interrupted before their commit rename, or deletes
	// interrupted after it, leave dot-dirs that never list: remove them.
	if ents, err := os.ReadDir(cfg.Paths.SnapshotsDir()); err == nil {
		for _, de := range ents {
			if strings.HasPrefix(de.Name(), ".tmp-") || strings.HasPrefix(de.Name(), ".deleted-") {
				os.RemoveAll(filepath.Join(cfg.Paths.SnapshotsDir(), de.Name()))
			}
		}
	}
	return m, nil
}

// Close stops watching VMs. Running VMs keep running (they outlive the
// daemon and are re-adopted by the next one).
func (m *Manager) Close() error {
	select {
	case <-m.closed:
		return nil
	default:
	}
	close(m.closed)
	m.mu.Lock()
	var lives []*liveVM
	var jobs []*compressJob
	for _, e := range m.entries {
		e.mu.Lock()
		if e.live != nil {
			lives = append(lives, e.live)
		}
		if e.compress != nil {
			jobs = append(jobs, e.compress)
			e.compress = nil
		}
		e.mu.Unlock()
	}
	m.mu.Unlock()
	for _, lv := range lives {
		lv.agentConn.close()
		lv.vm.Close()
	}
	m.stopCompressions(jobs)
	m.wg.Wait()
	return nil
}

func (m *Manager) dir(id string) string { return m.cfg.Paths.InstanceDir(id) }

func (m *Manager) load(ctx context.Context) error {
	ents, err := os.ReadDir(m.cfg.Paths.InstancesDir())
	if err != nil {
		return fmt.Errorf("list instances: %w", err)
	}
	for _, de := range ents {
		if strings.HasPrefix(de.Name(), ".deleted-") {
			// A delete interrupted after its rename: finish it.
			os.RemoveAll(filepath.Join(m.cfg.Paths.InstancesDir(), de.Name()))
			continue
		}
		if !de.IsDir() || strings.HasPrefix(de.Name(), ".") {
			continue
		}
		var meta Metadata
		if err := fsutil.ReadJSON(filepath.Join(m.dir(de.Name()), metadataFile), &meta); err != nil {
			// A create that died before its first metadata write leaves a
			// dir without metadata: it never existed as far as users know.
			m.log.Warn("skipping instance dir without readable metadata", "dir", de.Name(), "err", err)
			continue
		}
		e := &entry{meta: meta}
		m.entries[meta.ID] = e
		m.adopt(ctx, e)
		removeStandbyNext(m.dir(meta.ID))
	}
	for _, e := range m.entries {
		m.scheduleCompression(e) // interrupted or still pending delayed compressions
	}
	return nil
}

// adopt re-attaches a VMM left running by a previous daemon, or reconciles
// an instance whose VMM died meanwhile.
func (m *Manager) adopt(ctx context.Context, e *entry) {
	id := e.meta.ID
	vm, err := m.cfg.Hypervisor.Attach(ctx, m.dir(id))
	switch {
	case err == nil:
		lv := newLiveVM(vm)
		if e.meta.RestoredAt != nil {
			lv.started.Store(true)
			lv.agent.Store(true)
		}
		e.live = lv
		m.adoptTransition(ctx, e)
		if e.live == nil {
			return
		}
		m.startWatcher(e, lv, true)
		m.reshapeTAP(ctx, e.meta)
		m.log.Info("re-adopted running instance", "id", id, "name", e.meta.Name, "pid", vm.Pid())
	case errors.Is(err, hypervisor.ErrNotRunning):
		m.adoptTransition(ctx, e)
		if e.meta.StartedAt != nil && e.meta.StoppedAt == nil && !e.meta.HasSnapshot {
			exit, _ := scanExit(filepath.Join(m.dir(id), hypervisor.SerialLogName), e.meta.BootSerialOffset)
			when := time.Now()
			if st, err := os.Stat(filepath.Join(m.dir(id), hypervisor.SerialLogName)); err == nil {
				when = st.ModTime()
			}
			applyExit(&e.meta, exit, when, "vmm exited while the daemon was not running, without a guest exit status")
			e.meta.ExitKind = exitVMCrashed
			if exit != nil {
				e.meta.ExitKind = exitCode
			}
			if err := m.persist(e); err != nil {
				m.log.Error("persist reconciled instance", "id", id, "err", err)
			}
			m.log.Info("reconciled instance whose vmm exited while the daemon was down", "id", id)
		}
		if !e.meta.HasSnapshot {
			m.releaseNetwork(id)
		}
	default:
		e.attachErr = err.Error()
		m.log.Error("cannot re-adopt instance", "id", id, "err", err)
	}
}

// Exists reports whether an instance with this exact ID exists (used to
// prune network leases of instances that are gone).
func (m *Manager) Exists(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.entries[id]
	return ok
}

// persist writes e.meta atomically. Caller holds e.mu.
func (m *Manager) persist(e *entry) error {
	return fsutil.WriteJSONAtomic(filepath.Join(m.dir(e.meta.ID), metadataFile), &e.meta, 0o644)
}

// resolve finds an instance by ID, exact name, or unique ID prefix.
func (m *Manager) resolve(ref string) (*entry, error) {
	select {
	case <-m.closed:
		return nil, ErrClosed
	default:
	}
	if ref == "" {
		return nil, fmt.Errorf("%w: empty reference", ErrNotFound)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.entries[ref]; ok {
		return e, nil
	}
	all := make([]*entry, 0, len(m.entries))
	for _, e := range m.entries {
		all = append(all, e)
	}
	return matchRef(ref, all, func(e *entry) (string, string) {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.meta.ID, e.meta.Name
	}, "instances", ErrNotFound)
}

// matchRef is the reference rule instances and snapshots share: an exact
// name wins, then a unique ID prefix; a prefix matching several is
// ErrAmbiguous (409), nothing is notFound (404). Callers check an exact ID
// first (their fast path).
func matchRef[T any](ref string, items []T, idName func(T) (id, name string), kind string, notFound error) (T, error) {
	var zero T
	var byName, byPrefix []T
	for _, it := range items {
		id, name := idName(it)
		if name == ref {
			byName = append(byName, it)
		}
		if strings.HasPrefix(id, ref) {
			byPrefix = append(byPrefix, it)
		}
	}
	switch {
	case len(byName) == 1:
		return byName[0], nil
	case len(byPrefix) == 1:
		return byPrefix[0], nil
	case len(byPrefix) > 1:
		return zero, fmt.Errorf("%w: %q matches %d %s", ErrAmbiguous, ref, len(byPrefix), kind)
	}
	return zero, fmt.Errorf("%w: %s", notFound, ref)
}

// observe times one operation: defer m.observe("stop", time.Now(), &err).
func (m *Manager) observe(op string, start time.Time, err *error) {
	m.cfg.Metrics.ObserveOperation(op, time.Since(start), *err)
}

func (m *Manager) step(name string) {
	if m.cfg.StepHook != nil {
		m.cfg.StepHook(name)
	}
}

// Get returns one instance.
func (m *Manager) Get(ctx context.Context, ref string) (*Instance, error) {
	e, err := m.resolve(ref)
	if err != nil {
		return nil, err
	}
	return m.view(ctx, e)
}

// ListOptions filters List.
type ListOptions struct {
	State state.State // "" = all
	// Tags keeps only instances carrying every one of these tags.
	Tags map[string]string
}

// List returns all instances, oldest first.
func (m *Manager) List(ctx context.Context, opts ListOptions) ([]*Instance, error) {
	select {
	case <-m.closed:
		return nil, ErrClosed
	default:
	}
	m.mu.Lock()
	es := make([]*entry, 0, len(m.entries))
	for _, e := range m.entries {
		es = append(es, e)
	}
	m.mu.Unlock()
	out := make([]*Instance, 0, len(es))
	for _, e := range es {
		if len(opts.Tags) > 0 {
			e.mu.Lock()
			match := tags.Match(e.meta.Tags, opts.Tags)
			e.mu.Unlock()
			if !match {
				continue // cheap filter first: no state derivation
			}
		}
		inst, err := m.view(ctx, e)
		if err != nil {
			continue // deleted meanwhile
		}
		if opts.State != "" && inst.State != opts.State {
			continue
		}
		out = append(out, inst)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].ID < out[j].ID
		}
		return out[i].CreatedAt.Before(out[j].CreatedAt)
	})
	return out, nil
}

// view snapshots an entry and derives its state.
func (m *Manager) view(ctx context.Context, e *entry) (*Instance, error) {
	e.mu.Lock()
	if e.deleted {
		e.mu.Unlock()
		return nil, ErrNotFound
	}
	meta := e.meta
	lv := e.live
	attachErr := e.attachErr
	e.mu.Unlock()
	if lv != nil {
		select {
		case <-lv.vm.Done():
			// The VMM is gone but its watcher may not have recorded the
			// exit yet: wait for it so nobody sees Stopped without exit
			// info (the watcher drains the log and persists in ms).
			select {
			case <-lv.handled:
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
			}
			e.mu.Lock()
			meta, lv, attachErr = e.meta, e.live, e.attachErr
			e.mu.Unlock()
		default:
		}
	}
	st, stErr := m.derive(ctx, meta, lv, attachErr)
	inst := toInstance(meta, st, stErr)
	inst.Network = m.networkInfo(meta)
	policyView(inst, meta)
	if meta.SnapshotPolicy != nil {
		p := *meta.SnapshotPolicy
		inst.SnapshotPolicy = &p
	}
	if meta.HasSnapshot && meta.StandbyCompression.State != "" {
		sc := meta.StandbyCompression
		inst.StandbyCompression = &sc
	}
	if lv != nil {
		inst.Pid = lv.vm.Pid()
	}
	return inst, nil
}

// derive computes the state from the VMM and guest markers.
func (m *Manager) derive(ctx context.Context, meta Metadata, lv *liveVM, attachErr string) (state.State, *string) {
	if attachErr != "" {
		return state.Unknown, &attachErr
	}
	if lv == nil {
		if meta.HasSnapshot {
			return state.Standby, nil
		}
		return state.Stopped, nil
	}
	select {
	case <-lv.vm.Done():
		// Exited; the watcher is recording it. Report the outcome now.
		return state.Stopped, nil
	default:
	}
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	rs, err := lv.vm.Status(qctx)
	if err != nil {
		select {
		case <-lv.vm.Done():
			return state.Stopped, nil
		default:
		}
		msg := fmt.Sprintf("vmm control channel unreachable: %v", err)
		return state.Unknown, &msg
	}
	switch rs {
	case hypervisor.RunStateCreated:
		return state.Created, nil
	case hypervisor.RunStatePaused:
		return state.Paused, nil
	case hypervisor.RunStateShutdown:
		return state.Shutdown, nil
	case hypervisor.RunStateRunning:
		if lv.programStarted() && (!m.cfg.RequireAgent || meta.SkipGuestAgent || lv.agentReady()) {
			return state.Running, nil
		}
		return state.Initializing, nil
	}
	msg := fmt.Sprintf("unexpected vmm run state %q", rs)
	return state.Unknown, &msg
}

func toInstance(meta Metadata, st state.State, stErr *string) *Instance {
	return &Instance{
		ID: meta.ID, Name: meta.Name, Image: meta.Image, ImageDigest: meta.ImageDigest,
		State: st, StateError: stErr,
		Size: meta.Size, VCPUs: meta.VCPUs, OverlaySize: meta.OverlaySize,
		HotplugSize: meta.Limits.HotplugSize, DiskIOBps: meta.Limits.DiskIOBps,
		BandwidthDownload: meta.Limits.BandwidthDownload, BandwidthUpload: meta.Limits.BandwidthUpload,
		Env: meta.Env, Entrypoint: meta.Entrypoint, Cmd: meta.Cmd, Tags: meta.Tags,
		CreatedAt: meta.CreatedAt, StartedAt: meta.StartedAt, StoppedAt: meta.StoppedAt,
		ExitCode: meta.ExitCode, ExitMessage: meta.ExitMessage,
		HasSnapshot: meta.HasSnapshot, Hypervisor: meta.Hypervisor, Platform: meta.Platform,
	}
}

// currentState derives the state of e (caller holds e.op).
func (m *Manager) currentState(ctx context.Context, e *entry) state.State {
	e.mu.Lock()
	meta, lv, ae := e.meta, e.live, e.attachErr
	e.mu.Unlock()
	st, _ := m.derive(ctx, meta, lv, ae)
	return st
}

func (m *Manager) publish(id string, from, to state.State, reason string) {
	if from == to {
		return
	}
	typ := events.TypeStateChange
	if to == "" {
		typ = events.TypeDeleted
	}
	if _, err := m.cfg.Events.Publish(events.Event{Type: typ, InstanceID: id, From: from, To: to, At: time.Now().UTC(), Reason: reason}); err != nil {
		m.log.Debug("publish event", "id", id, "err", err)
	}
}

// logf appends a line to the instance's hypeman log (the "hypeman" log
// source): what the daemon did to this instance and why.
func (m *Manager) logf(id, format string, args ...any) {
	f, err := os.OpenFile(filepath.Join(m.dir(id), hypemanLog), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s %s\n", time.Now().UTC().Format(time.RFC3339Nano), fmt.Sprintf(format, args...))
}

// applyExit records how a boot ended. Caller holds e.mu.
func applyExit(meta *Metadata, exit *guestconfig.Exit, when time.Time, noExitMsg string) {
	t := when.UTC()
	meta.StoppedAt = &t
	if exit != nil {
		code, msg := exit.Code, exit.Message
		meta.ExitCode, meta.ExitMessage = &code, &msg
		return
	}
	meta.ExitCode = nil
	msg := noExitMsg
	meta.ExitMessage = &msg
}
