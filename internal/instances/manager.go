package instances

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"hypeman/internal/durations"
	"hypeman/internal/events"
	"hypeman/internal/fsutil"
	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/hypervisor"
	"hypeman/internal/instances/state"
	"hypeman/internal/paths"
	"hypeman/internal/tags"
	"hypeman/internal/warm"
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
	// Volumes is the volume store (optional: nil = requests with volumes
	// are refused).
	Volumes VolumeStore
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
	// SerialLogMaxBytes rotates a VM's serial log (the app log) when it
	// reaches this size; SerialLogFiles rotated files are kept (at least
	// 1), so an instance holds at most (SerialLogFiles+1) × SerialLogMaxBytes
	// of console output while the daemon runs. 0 = no rotation.
	SerialLogMaxBytes int64
	SerialLogFiles    int
	// Admission, when set, must admit what an instance holds before it is
	// created, booted, restored or forked (see admission.go).
	Admission Admission
	// Defaults for create requests.
	DefaultSize        string
	DefaultVCPUs       int
	DefaultOverlaySize string
	// Warm, when set, enables warm create from pre-booted templates
	// (warm.go, package warm).
	Warm *warm.Config
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

	warm *warm.Pool // nil: warm create disabled
}

// entry is one instance in memory.
type entry struct {
	op sync.Mutex // serializes lifecycle operations on this instance

	mu        sync.Mutex // guards the fields below
	meta      Metadata
	live      *liveVM
	attachErr string // re-adoption failed for a live VMM (state Unknown)
	// broken is set when metadata.json could not be read (an unknown
	// format version, a damaged file): the instance shows as Unknown with
	// this reason, nothing is written over its files, and only Delete is
	// allowed.
	broken   string
	deleted  bool
	compress *compressJob // delayed standby compression, if scheduled
}

// metadataVersion is the newest metadata.json format this build reads.
// Version 2 added volumes; an instance without volumes is still written as
// version 1, so a build that predates volumes keeps reading it, and one
// with volumes is never booted without them by such a build. Version 3
// marks a Template (is_template): a build without templates would wake or
// delete it under its forks.
const metadataVersion = 3

// metadataVersionFor is the format version meta is written with.
func metadataVersionFor(meta *Metadata) int {
	if meta.IsTemplate {
		return 3
	}
	if len(meta.Volumes) > 0 {
		return 2
	}
	return 1
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
	m.seedAdmission()
	if err := m.openWarm(ctx); err != nil {
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
	if m.warm != nil {
		m.warm.Close()
	}
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
		id := de.Name()
		var meta Metadata
		_, err := fsutil.ReadVersionedJSON(filepath.Join(m.dir(id), metadataFile), metadataVersion, &meta)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// A create or fork that died before its first metadata
			// write: it never existed as far as users know.
			m.removeOrphanDir(ctx, id)
			continue
		case err != nil:
			// Keep the data (a newer hypemand may own it) and report the
			// instance as Unknown; every other instance loads.
			e := &entry{meta: Metadata{ID: id, Name: id}, broken: "cannot read instance metadata: " + err.Error()}
			if st, serr := os.Stat(m.dir(id)); serr == nil {
				e.meta.CreatedAt = st.ModTime().UTC()
			}
			m.entries[id] = e
			m.log.Error("instance metadata unreadable; instance reported as Unknown", "id", id, "err", err)
			continue
		}
		removeLeftovers(m.dir(id))
		e := &entry{meta: meta}
		switch meta.Transition {
		case transitionDelete:
			m.discardAtLoad(ctx, e, "instance whose delete was interrupted")
			continue
		case transitionFork:
			m.discardAtLoad(ctx, e, "fork interrupted before it was complete")
			continue
		}
		m.entries[meta.ID] = e
		m.adopt(ctx, e)
	}
	m.recountForks() // templates.go: counts follow the forks that exist
	for _, e := range m.entries {
		m.scheduleCompression(e) // interrupted or still pending delayed compressions
	}
	for _, e := range m.entries {
		// Sources of forks from Running that a killed daemon left on
		// standby: bring them back (after the half forks above are gone).
		if e.meta.ReturnTo != "" {
			m.finishReturn(ctx, e)
		}
		if e.broken == "" && !e.meta.HasSnapshot {
			// A committed restore killed before removing its consumed
			// snapshot leaves it behind (as large as the guest's memory).
			os.RemoveAll(filepath.Join(m.dir(e.meta.ID), standbyDir))
		}
	}
	return nil
}

// removeOrphanDir deletes an instance dir without metadata, unless a VMM
// still runs in it (never the case for dirs our creates and forks leave).
func (m *Manager) removeOrphanDir(ctx context.Context, id string) {
	dir := m.dir(id)
	if vm, err := m.cfg.Hypervisor.Attach(ctx, dir); err == nil {
		vm.Close()
		m.log.Warn("instance dir without metadata has a live vmm; leaving it", "dir", dir)
		return
	}
	m.log.Info("removing instance dir without metadata (interrupted create or fork)", "dir", dir)
	os.RemoveAll(dir)
}

// leftoverPatterns are temporary files an interrupted operation leaves in an
// instance dir: atomic-write temps (fsutil), a half-written standby
// snapshot (the driver's SaveState), half-copied disks of a snapshot
// restore (RestoreSnapshot), the output of a delayed compression that did
// not finish (compression.go).
var leftoverPatterns = []string{".*.tmp-*", standbyDir + ".tmp-*", ".*.restore", standbyNextPrefix + "*"}

// removeLeftovers deletes them; called only while nothing runs on the
// instance (at load).
func removeLeftovers(dir string) {
	for _, pat := range leftoverPatterns {
		matches, _ := filepath.Glob(filepath.Join(dir, pat))
		for _, p := range matches {
			os.RemoveAll(p)
		}
	}
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
		lv.started.Store(lv.started.Load() || e.meta.ProgramStarted)
		lv.agent.Store(lv.agent.Load() || e.meta.AgentReady)
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

// persist writes e.meta atomically. Caller holds e.mu. An instance whose
// metadata could not be read is never written over.
func (m *Manager) persist(e *entry) error {
	if e.broken != "" {
		return fmt.Errorf("instance %s: not saving metadata: %s", e.meta.ID, e.broken)
	}
	e.meta.Version = metadataVersionFor(&e.meta)
	return fsutil.WriteJSONAtomic(filepath.Join(m.dir(e.meta.ID), metadataFile), &e.meta, 0o644)
}

// refuseBroken returns a TransitionError for an instance whose metadata
// could not be read: only Delete applies to it (the other actions would
// have to write its metadata over).
func (m *Manager) refuseBroken(e *entry, a Action) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.broken == "" {
		return nil
	}
	return &TransitionError{Action: a, State: state.Unknown, Allowed: []Action{ActionDelete}}
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
	deleted := e.deleted
	e.mu.Unlock()
	if deleted {
		return nil, ErrNotFound
	}
	meta, lv, st, stErr := m.read(ctx, e)
	inst := toInstance(meta, st, stErr)
	inst.StopTimeout = durations.Format(m.stopTimeout(meta))
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

// exitRecordWait bounds how long a reader waits for the watcher to record
// the exit of a VMM that is going away (it takes milliseconds: drain the
// console, persist).
const exitRecordWait = 5 * time.Second

// read returns a consistent reading of e: its metadata, live VM and derived
// state. A VM that is exiting (process gone, or its control channel hung
// up on the way out) is not reported until the watcher has recorded its
// exit: read waits for that, so Stopped is never visible without its exit
// information and an exiting VM is never Unknown. If the exit is still not
// recorded after exitRecordWait (or ctx ends), the VM is reported as
// Shutdown (the guest is off, the VMM still ends).
func (m *Manager) read(ctx context.Context, e *entry) (Metadata, *liveVM, state.State, *string) {
	for waited := false; ; waited = true {
		e.mu.Lock()
		meta, lv, attachErr, broken := e.meta, e.live, e.attachErr, e.broken
		e.mu.Unlock()
		if broken != "" {
			return meta, lv, state.Unknown, &broken
		}
		st, stErr, exiting := m.derive(ctx, meta, lv, attachErr)
		if !exiting {
			return meta, lv, st, stErr
		}
		if waited || ctx.Err() != nil {
			msg := "the vmm is exiting; its exit status is not recorded yet"
			return meta, lv, state.Shutdown, &msg
		}
		t := time.NewTimer(exitRecordWait)
		select {
		case <-lv.handled:
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// derive computes the state from the VMM and guest markers. exiting means
// the VMM is going away and its watcher has not recorded the exit yet (the
// returned state is then meaningless).
func (m *Manager) derive(ctx context.Context, meta Metadata, lv *liveVM, attachErr string) (st state.State, stErr *string, exiting bool) {
	if attachErr != "" {
		return state.Unknown, &attachErr, false
	}
	if lv == nil {
		if meta.HasSnapshot {
			return templateOr(meta, state.Standby), nil, false
		}
		return state.Stopped, nil, false
	}
	select {
	case <-lv.vm.Done():
		return "", nil, true
	default:
	}
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	rs, err := lv.vm.Status(qctx)
	if err != nil {
		select {
		case <-lv.vm.Done():
			return "", nil, true
		default:
		}
		if errors.Is(err, hypervisor.ErrExiting) || errors.Is(err, hypervisor.ErrNotRunning) {
			return "", nil, true
		}
		msg := fmt.Sprintf("vmm control channel unreachable: %v", err)
		return state.Unknown, &msg, false
	}
	switch rs {
	case hypervisor.RunStateCreated:
		return state.Created, nil, false
	case hypervisor.RunStatePaused:
		return state.Paused, nil, false
	case hypervisor.RunStateIOError:
		msg := ioErrorMessage(lv.vm.DiskErrors(qctx))
		return state.Paused, &msg, false
	case hypervisor.RunStateShutdown:
		return state.Shutdown, nil, false
	case hypervisor.RunStateRunning:
		if lv.programStarted() && (!m.cfg.RequireAgent || meta.SkipGuestAgent || lv.agentReady()) {
			return state.Running, nil, false
		}
		return state.Initializing, nil, false
	}
	msg := fmt.Sprintf("unexpected vmm run state %q", rs)
	return state.Unknown, &msg, false
}

func toInstance(meta Metadata, st state.State, stErr *string) *Instance {
	return &Instance{
		ID: meta.ID, Name: meta.Name, Image: meta.Image, ImageDigest: meta.ImageDigest,
		State: st, StateError: stErr,
		Size: meta.Size, VCPUs: meta.VCPUs, OverlaySize: meta.OverlaySize,
		HotplugSize: meta.Limits.HotplugSize, DiskIOBps: meta.Limits.DiskIOBps,
		BandwidthDownload: meta.Limits.BandwidthDownload, BandwidthUpload: meta.Limits.BandwidthUpload,
		Env: meta.Env, Entrypoint: meta.Entrypoint, Cmd: meta.Cmd, Tags: meta.Tags,
		CreatedAt: meta.CreatedAt, StartedAt: meta.StartedAt, StoppedAt: meta.StoppedAt, ExpiresAt: meta.ExpiresAt,
		ExitCode: meta.ExitCode, ExitMessage: meta.ExitMessage,
		HasSnapshot: meta.HasSnapshot, Hypervisor: meta.Hypervisor, Platform: meta.Platform,
		Volumes:   publicVolumes(meta.Volumes),
		ForkCount: meta.ForkCount, ForkOfTemplate: meta.ForkOfTemplate,
		StartMode: meta.StartMode, WorkingDir: meta.WorkingDir,
	}
}

// currentState derives the state of e (caller holds e.op).
func (m *Manager) currentState(ctx context.Context, e *entry) state.State {
	_, _, st, _ := m.read(ctx, e)
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
