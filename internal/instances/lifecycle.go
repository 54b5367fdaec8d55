package instances

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"hypeman/internal/childproc"
	"hypeman/internal/durations"
	"hypeman/internal/fsutil"
	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/health"
	"hypeman/internal/hypervisor"
	"hypeman/internal/instances/state"
	"hypeman/internal/network"
	"hypeman/internal/resources"
	"hypeman/internal/rotlog"
	"hypeman/internal/tags"
)

// Create validates p, resolves (and if needed pulls) the image, creates the
// instance's directory and writable disk, and boots it. On a boot failure
// nothing is left behind.
func (m *Manager) Create(ctx context.Context, p CreateParams) (_ *Instance, err error) {
	defer m.observe("create", time.Now(), &err)
	meta, err := m.validateCreate(p)
	if err != nil {
		return nil, err
	}
	if err := m.reserveName(meta.Name); err != nil {
		return nil, err
	}
	defer m.releaseName(meta.Name)

	resolve := m.cfg.Images.Resolve
	if p.NoPull {
		resolve = m.cfg.Images.ResolveLocal
	}
	img, err := resolve(ctx, p.Image)
	if err != nil {
		return nil, err
	}
	meta.ImageDigest, meta.Platform = img.Digest, img.Platform
	meta.ID = m.uniqueID()
	meta.CreatedAt = time.Now().UTC()
	meta.ExpiresAt = p.ExpiresAt
	meta.Hypervisor = m.cfg.Hypervisor.Name()

	dir := m.dir(meta.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create instance dir: %w", err)
	}
	cleanup := func() { os.RemoveAll(dir); m.release(meta.ID, resources.ReleaseAll) }
	if err := m.admit(ctx, *meta, true); err != nil {
		cleanup()
		return nil, err
	}
	if err := createOverlayDisk(ctx, filepath.Join(dir, overlayFile), meta.OverlayBytes); err != nil {
		cleanup()
		return nil, err
	}
	if len(meta.Volumes) > 0 {
		// The store first: a daemon killed before the metadata below is
		// written leaves attachments its start-up reconcile drops.
		field := func(i int) string { return fmt.Sprintf("volumes[%d]", i) }
		if err := m.attachVolumes(ctx, meta.ID, meta.Volumes, 0, field); err != nil {
			cleanup()
			return nil, err
		}
		cleanup = func() { os.RemoveAll(dir); m.detachAll(ctx, meta.ID); m.release(meta.ID, resources.ReleaseAll) }
		if err := createVolumeOverlays(ctx, dir, meta.Volumes, nil); err != nil {
			cleanup()
			return nil, err
		}
	}
	e := &entry{meta: *meta}
	e.op.Lock()
	defer e.op.Unlock()
	e.mu.Lock()
	err = m.persist(e)
	e.mu.Unlock()
	if err != nil {
		cleanup()
		return nil, err
	}
	m.mu.Lock()
	m.entries[meta.ID] = e
	m.mu.Unlock()
	m.logf(meta.ID, "created from image %s (%s)", meta.Image, img.Digest)
	m.publish(meta.ID, "", state.Stopped, "created")

	if err := m.bootOrWarm(ctx, e, img); err != nil {
		m.mu.Lock()
		delete(m.entries, meta.ID)
		m.mu.Unlock()
		e.mu.Lock()
		e.deleted = true
		e.mu.Unlock()
		cleanup()
		m.publish(meta.ID, state.Stopped, "", "create failed")
		return nil, err
	}
	return m.view(ctx, e)
}

func (m *Manager) validateCreate(p CreateParams) (*Metadata, error) {
	if err := ValidateName(p.Name); err != nil {
		return nil, err
	}
	if strings.TrimSpace(p.Image) == "" {
		return nil, &InvalidArgumentError{Field: "image", Reason: "is required"}
	}
	mem, size, err := parseSizeField("size", p.Size, m.cfg.DefaultSize, MinMemoryBytes, MaxMemoryBytes)
	if err != nil {
		return nil, err
	}
	ov, ovSize, err := parseSizeField("overlay_size", p.OverlaySize, m.cfg.DefaultOverlaySize, MinOverlayBytes, MaxOverlayBytes)
	if err != nil {
		return nil, err
	}
	vcpus := p.VCPUs
	if vcpus == 0 {
		vcpus = m.cfg.DefaultVCPUs
	}
	if vcpus < 1 || vcpus > MaxVCPUs {
		return nil, &InvalidArgumentError{Field: "vcpus", Reason: fmt.Sprintf("must be between 1 and %d", MaxVCPUs)}
	}
	if err := validateKV("env", p.Env, maxEnv, envKeyOK); err != nil {
		return nil, err
	}
	if err := validateTags("tags", p.Tags); err != nil {
		return nil, err
	}
	for field, v := range map[string][]string{"entrypoint": p.Entrypoint, "cmd": p.Cmd} {
		if len(v) > maxArgs {
			return nil, &InvalidArgumentError{Field: field, Reason: fmt.Sprintf("at most %d elements", maxArgs)}
		}
	}
	if err := validateAutoStandby(p.AutoStandby); err != nil {
		return nil, err
	}
	if err := validatePolicies(p.RestartPolicy, p.HealthCheck); err != nil {
		return nil, err
	}
	if err := validateSnapshotPolicy(p.SnapshotPolicy); err != nil {
		return nil, err
	}
	vols, err := m.validateVolumes(p.Volumes)
	if err != nil {
		return nil, err
	}
	stopTimeout, err := parseStopTimeout(p.StopTimeout, m.cfg.GuestStopTimeout)
	if err != nil {
		return nil, err
	}
	if err := validateWorkingDir(p.WorkingDir); err != nil {
		return nil, err
	}
	networkDisabled := p.NetworkEnabled != nil && !*p.NetworkEnabled
	limits, err := parseLimits(p, mem, m.shapeableNetwork(networkDisabled))
	if err != nil {
		return nil, err
	}
	meta := &Metadata{
		Name: p.Name, Image: strings.TrimSpace(p.Image),
		MemoryBytes: mem, Size: size, VCPUs: vcpus, OverlayBytes: ov, OverlaySize: ovSize,
		Env: maps.Clone(p.Env), Entrypoint: p.Entrypoint, Cmd: p.Cmd, Tags: tags.Clone(p.Tags),
		SkipGuestAgent:  p.SkipGuestAgent,
		NetworkDisabled: networkDisabled,
		Limits:          limits,
		Volumes:         vols,
		StopTimeout:     stopTimeout,
		WorkingDir:      p.WorkingDir,
	}
	if p.AutoStandby != nil {
		meta.AutoStandby = *p.AutoStandby
	}
	if p.RestartPolicy != nil {
		meta.RestartPolicy = *p.RestartPolicy
	}
	if sp := p.SnapshotPolicy; sp != nil {
		cp := *sp
		if sp.Compression != nil {
			c := *sp.Compression
			cp.Compression = &c
		}
		meta.SnapshotPolicy = &cp
	}
	if p.HealthCheck != nil && !p.HealthCheck.IsZero() {
		meta.HealthCheck = *p.HealthCheck
		meta.HealthStatus = health.Initial(*p.HealthCheck)
	}
	return meta, nil
}

func (m *Manager) reserveName(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.reserved[name] {
		return fmt.Errorf("%w: %s", ErrNameInUse, name)
	}
	for _, e := range m.entries {
		e.mu.Lock()
		taken := e.meta.Name == name
		e.mu.Unlock()
		if taken {
			return fmt.Errorf("%w: %s", ErrNameInUse, name)
		}
	}
	m.reserved[name] = true
	return nil
}

func (m *Manager) releaseName(name string) {
	m.mu.Lock()
	delete(m.reserved, name)
	m.mu.Unlock()
}

func (m *Manager) uniqueID() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		id := newID()
		if _, taken := m.entries[id]; !taken {
			return id
		}
	}
}

// createOverlayDisk makes the sparse, empty ext4 disk the guest uses as the
// overlay upper layer. Lazy init keeps this ~20 ms even for 10 GB.
func createOverlayDisk(ctx context.Context, path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("create overlay disk: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("size overlay disk: %w", err)
	}
	f.Close()
	out, err := childproc.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-m", "0", "-L", "hm-overlay",
		"-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", path).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "No space left on device") {
			// mkfs only says so in its output: keep the errno for callers.
			err = syscall.ENOSPC
		}
		return fmt.Errorf("format overlay disk: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Start boots a Stopped instance.
func (m *Manager) Start(ctx context.Context, ref string, p StartParams) (_ *Instance, err error) {
	defer m.observe("start", time.Now(), &err)
	if err := p.validate(); err != nil {
		return nil, err
	}
	e, err := m.resolve(ref)
	if err != nil {
		return nil, err
	}
	e.op.Lock()
	defer e.op.Unlock()
	if err := m.checkAction(e, ActionStart, m.currentState(ctx, e)); err != nil {
		return nil, err
	}
	if err := m.startLocked(ctx, e, p); err != nil {
		return nil, err
	}
	return m.view(ctx, e)
}

// StartParams change what a start runs. nil keeps the instance's current
// value; a non-nil empty slice clears the override (back to the image's).
// The change is persisted: later starts and restarts run the same.
type StartParams struct {
	Entrypoint *[]string
	Cmd        *[]string
}

func (p StartParams) validate() error {
	for field, v := range map[string]*[]string{"entrypoint": p.Entrypoint, "cmd": p.Cmd} {
		if v != nil && len(*v) > maxArgs {
			return &InvalidArgumentError{Field: field, Reason: fmt.Sprintf("at most %d elements", maxArgs)}
		}
	}
	return nil
}

// startLocked boots a Stopped instance (caller holds e.op and checked the
// transition), applying p first.
func (m *Manager) startLocked(ctx context.Context, e *entry, p StartParams) error {
	e.mu.Lock()
	if p.Entrypoint != nil {
		e.meta.Entrypoint = nilIfEmpty(*p.Entrypoint)
	}
	if p.Cmd != nil {
		e.meta.Cmd = nilIfEmpty(*p.Cmd)
	}
	image := e.meta.Image
	e.meta.RestartStatus.ClearForStart() // the user takes over
	err := m.persist(e)
	e.mu.Unlock()
	if err != nil {
		return err
	}
	img, err := m.cfg.Images.Resolve(ctx, image)
	if err != nil {
		m.recordLaunchFailure(e, err)
		return fmt.Errorf("start: %w", err)
	}
	return m.boot(ctx, e, img)
}

func nilIfEmpty(v []string) []string {
	if len(v) == 0 {
		return nil
	}
	return slices.Clone(v)
}

// guestConfig builds the config disk contents (Docker semantics for
// entrypoint/cmd: overriding the entrypoint drops the image's cmd; the
// instance's working_dir replaces the image's WORKDIR). It is the program's
// config on both paths: a cold boot's config disk and a warm start's start
// op (the template itself carries no program, so its shape never depends
// on these fields).
func (m *Manager) guestConfig(meta Metadata, img ImageInfo) *guestconfig.Config {
	entry, cmd := img.Entrypoint, img.Cmd
	if meta.Entrypoint != nil {
		entry, cmd = meta.Entrypoint, nil
	}
	if meta.Cmd != nil {
		cmd = meta.Cmd
	}
	env := map[string]string{}
	for _, kv := range img.Env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	maps.Copy(env, meta.Env)
	cwd := img.WorkingDir
	if meta.WorkingDir != "" {
		cwd = meta.WorkingDir
	}
	gc := &guestconfig.Config{
		Entrypoint: entry, Cmd: cmd, Env: env, WorkingDir: cwd, User: img.User,
		Hostname: meta.Name, RootFS: img.FSType,
		StopTimeoutSeconds: guestStopSeconds(m.stopTimeout(meta)),
		SkipGuestAgent:     meta.SkipGuestAgent,
		Volumes:            deriveDisks("", "", meta).Guest,
	}
	if memMiB, balloonMiB := vmMemory(meta); balloonMiB > 0 {
		gc.MemoryTarget = int64(memMiB-balloonMiB) << 20 // the program starts with size
	}
	return gc
}

// boot launches the VM for e (caller holds e.op; e has no live VM).
func (m *Manager) boot(ctx context.Context, e *entry, img ImageInfo) error {
	e.mu.Lock()
	meta := e.meta
	e.mu.Unlock()
	dir := m.dir(meta.ID)
	lease, _, disk, err := m.prepareRun(ctx, e, meta, img)
	if err != nil {
		return err
	}
	defer m.settleAdmission(e)
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, configFile), disk, 0o644); err != nil {
		return err
	}
	offset, err := rotlog.End(filepath.Join(dir, hypervisor.SerialLogName))
	if err != nil {
		return err
	}
	e.mu.Lock()
	markBooting(&e.meta, img, offset, StartCold)
	err = m.persist(e)
	e.mu.Unlock()
	if err != nil {
		return err
	}
	memMiB, balloonMiB := vmMemory(meta)
	cfg := hypervisor.VMConfig{
		ID: meta.ID, Dir: dir,
		KernelPath: m.cfg.Boot.KernelPath, InitrdPath: m.cfg.Boot.InitrdPath, Cmdline: m.cfg.Boot.Cmdline,
		MemoryMiB: memMiB, BalloonMiB: balloonMiB, VCPUs: meta.VCPUs, DiskIOBps: meta.Limits.DiskIOBytesPerSec,
		Disks:       deriveDisks(dir, img.DiskPath, meta).Disks,
		AgentSocket: filepath.Join(dir, agentSock),
	}
	if lease != nil {
		cfg.Net = lease.NetConfig()
	}
	vm, err := m.cfg.Hypervisor.Launch(ctx, cfg)
	if err != nil {
		t := time.Now().UTC()
		msg := "launch failed: " + err.Error()
		e.mu.Lock()
		e.meta.StoppedAt, e.meta.ExitMessage = &t, &msg
		e.meta.ExitKind = exitLaunchFailed
		_ = m.persist(e)
		e.mu.Unlock()
		m.logf(meta.ID, "launch failed: %v", err)
		m.releaseNetwork(meta.ID)
		return fmt.Errorf("launch vm: %w", err)
	}
	lv := newLiveVM(vm)
	lv.launchedAt = time.Now()
	e.mu.Lock()
	e.live, e.attachErr = lv, ""
	e.mu.Unlock()
	m.startWatcher(e, lv, false)
	m.logf(meta.ID, "vm launched (pid %d, %s, %d MiB of which %d MiB hotplug held by the balloon, %d vcpus)",
		vm.Pid(), m.cfg.Hypervisor.Accel().Accel, cfg.MemoryMiB, cfg.BalloonMiB, cfg.VCPUs)
	m.publish(meta.ID, state.Stopped, state.Initializing, "start")
	return nil
}

// checkCommand refuses a boot with nothing to run.
func checkCommand(meta Metadata, img ImageInfo) error {
	if len(img.Entrypoint) == 0 && len(img.Cmd) == 0 && len(meta.Entrypoint) == 0 && len(meta.Cmd) == 0 {
		return &InvalidArgumentError{Field: "cmd", Reason: "the image has no entrypoint or cmd; give one"}
	}
	return nil
}

// prepareRun is what a cold boot and a warm start do before their VM runs
// (caller holds e.op; e has no live VM): check the command and the volume
// files, admit meta to run, lease its network and build and encode its
// guest config.
// On success the caller defers m.settleAdmission(e); on error nothing is
// held.
func (m *Manager) prepareRun(ctx context.Context, e *entry, meta Metadata, img ImageInfo) (*network.Lease, *guestconfig.Config, []byte, error) {
	if err := checkCommand(meta, img); err != nil {
		return nil, nil, nil, err
	}
	if err := checkVolumeFiles(meta.Volumes); err != nil {
		return nil, nil, nil, err
	}
	if err := m.admit(ctx, meta, true); err != nil {
		return nil, nil, nil, err
	}
	lease, err := m.leaseFor(ctx, meta)
	if err != nil {
		m.settleAdmission(e)
		return nil, nil, nil, err
	}
	gc := m.guestConfig(meta, img)
	if lease != nil {
		gc.Network = lease.GuestConfig()
	}
	disk, err := gc.Encode()
	if err != nil {
		m.releaseNetwork(meta.ID)
		m.settleAdmission(e)
		if errors.Is(err, guestconfig.ErrTooLarge) {
			return nil, nil, nil, &InvalidArgumentError{Field: "env", Reason: "the image's and this instance's environment, entrypoint and cmd " +
				"together are too large for the guest (" + err.Error() + "); use a smaller environment or an image with less of it"}
		}
		return nil, nil, nil, err
	}
	return lease, gc, disk, nil
}

// markBooting resets meta's run fields for a boot (cold or warm) whose
// console output starts at offset in the serial log (caller holds e.mu).
func markBooting(meta *Metadata, img ImageInfo, offset int64, mode string) {
	now := time.Now().UTC()
	meta.BootSerialOffset = offset
	meta.StartedAt = &now
	meta.StoppedAt, meta.ExitCode, meta.ExitMessage = nil, nil, nil
	meta.RestoredAt, meta.ExitKind = nil, ""
	meta.ProgramStarted, meta.AgentReady = false, false
	meta.ImageDigest, meta.Platform = img.Digest, img.Platform
	meta.StartMode = mode
}

// Stop stops the instance gracefully: the guest program gets SIGTERM through
// the guest agent and the guest powers off; if that does not finish in time
// the VMM is powered down and then killed. p.Timeout shortens the program's
// window for this stop (see stoptimeout.go).
func (m *Manager) Stop(ctx context.Context, ref string, p StopParams) (_ *Instance, err error) {
	defer m.observe("stop", time.Now(), &err)
	e, err := m.resolve(ref)
	if err != nil {
		return nil, err
	}
	e.op.Lock()
	defer e.op.Unlock()
	st := m.currentState(ctx, e)
	e.mu.Lock()
	id := e.meta.ID
	full := m.stopTimeout(e.meta)
	e.mu.Unlock()
	if err := m.refuseBroken(e, ActionStop); err != nil {
		return nil, err
	}
	window, short, err := p.window(full)
	if err != nil {
		return nil, err
	}
	// A Stopped instance waiting in restart backoff can be stopped: that
	// cancels the pending restart and keeps it down.
	pendingRestart := st == state.Stopped && m.restartPendingFor(id)
	if !pendingRestart {
		if err := checkTransition(ActionStop, st); err != nil {
			return nil, err
		}
	}
	e.mu.Lock()
	e.meta.RestartStatus.MarkManualStop()
	err = m.persist(e)
	e.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if pendingRestart {
		m.logf(id, "stop requested during restart backoff: restarts cancelled")
		return m.view(ctx, e)
	}
	if short {
		m.stopShortLocked(ctx, e, "stop requested", window)
	} else {
		m.stopLocked(ctx, e, "stop requested")
	}
	return m.view(ctx, e)
}

// liveForStop returns e's VM for a stop (caller holds e.op): nil when there
// is none. A VM whose re-adoption failed earlier is attached again so that
// it can be stopped.
func (m *Manager) liveForStop(ctx context.Context, e *entry) *liveVM {
	e.mu.Lock()
	lv, id, attachErr := e.live, e.meta.ID, e.attachErr
	e.mu.Unlock()
	if lv != nil || attachErr == "" {
		return lv
	}
	vm, err := m.cfg.Hypervisor.Attach(ctx, m.dir(id))
	e.mu.Lock()
	e.attachErr = ""
	e.mu.Unlock()
	if err != nil {
		return nil
	}
	lv = newLiveVM(vm)
	e.mu.Lock()
	e.live = lv
	e.mu.Unlock()
	m.startWatcher(e, lv, true)
	return lv
}

// requestShutdown asks e's guest to stop its program through the guest
// agent; false when that is not possible (no agent, or it failed).
func (m *Manager) requestShutdown(ctx context.Context, e *entry, lv *liveVM) bool {
	e.mu.Lock()
	id, skipAgent := e.meta.ID, e.meta.SkipGuestAgent
	e.mu.Unlock()
	if m.cfg.Agent == nil || skipAgent {
		return false
	}
	actx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := m.agentFor(actx, e, lv)
	if err == nil {
		err = c.Shutdown(actx)
	}
	if err != nil {
		m.logf(id, "guest agent shutdown failed: %v; sending an ACPI power-down", err)
		return false
	}
	return true
}

// stopLocked ends e's VM (caller holds e.op) within the instance's stop
// timeout (enforced by the guest) and waits until its exit is recorded.
func (m *Manager) stopLocked(ctx context.Context, e *entry, why string) {
	lv := m.liveForStop(ctx, e)
	if lv == nil {
		return
	}
	e.mu.Lock()
	id, full := e.meta.ID, m.stopTimeout(e.meta)
	e.mu.Unlock()
	lv.stopReason.Store(&why)
	m.logf(id, "%s", why)
	// The guest kills the program after its stop timeout, then tears
	// down and powers off.
	graceful := full + stopTeardownSlack
	// Without the agent the ACPI power button (system_powerdown) reaches
	// the guest init, which stops the program gracefully: give it the same
	// time before the VMM is killed.
	powerdown := 3 * time.Second
	if !m.requestShutdown(ctx, e, lv) {
		graceful, powerdown = 0, full+stopTeardownSlack
	}
	if graceful > 0 {
		select {
		case <-lv.vm.Done():
		case <-time.After(graceful):
			m.logf(id, "guest did not power off within %s", graceful)
		case <-ctx.Done():
		}
	}
	select {
	case <-lv.vm.Done():
	default:
		if err := lv.vm.Shutdown(context.WithoutCancel(ctx), powerdown); err != nil {
			m.logf(id, "vmm shutdown: %v; killing", err)
			_ = lv.vm.Kill()
		}
	}
	<-lv.handled
}

// stopShortLocked ends e's VM (caller holds e.op) within window, shorter
// than the stop timeout the guest was booted with: the program gets the
// same graceful request, but the host kills the VMM once the window (plus
// shortStopSlack for the guest's teardown) has passed; window 0 kills it at
// once. It waits until the exit is recorded.
func (m *Manager) stopShortLocked(ctx context.Context, e *entry, why string, window time.Duration) {
	lv := m.liveForStop(ctx, e)
	if lv == nil {
		return
	}
	e.mu.Lock()
	id := e.meta.ID
	e.mu.Unlock()
	w := durations.Format(window)
	killed := fmt.Sprintf("%s with timeout %s; killed after the timeout", why, w)
	if window == 0 {
		killed = why + " with timeout 0s; killed at once"
	}
	if window > 0 {
		reason := fmt.Sprintf("%s with timeout %s", why, w)
		lv.stopReason.Store(&reason)
		m.logf(id, "%s", reason)
		deadline := time.NewTimer(window + shortStopSlack)
		defer deadline.Stop()
		if m.requestShutdown(ctx, e, lv) {
			select {
			case <-lv.vm.Done():
			case <-deadline.C:
			case <-ctx.Done():
			}
		} else {
			// The ACPI power button; Shutdown kills the VMM itself when
			// the window ends (a guest that powers off in time prints
			// its exit, which the record prefers to the stop reason).
			lv.stopReason.Store(&killed)
			if err := lv.vm.Shutdown(context.WithoutCancel(ctx), window+shortStopSlack); err != nil {
				m.logf(id, "vmm shutdown: %v", err)
			}
		}
	}
	select {
	case <-lv.vm.Done():
	default:
		// Recorded as the stop reason: the exit message says the
		// program was killed (the guest reports nothing).
		lv.stopReason.Store(&killed)
		m.logf(id, "%s", killed)
		if err := lv.vm.Kill(); err != nil {
			m.logf(id, "kill vmm: %v", err)
		}
	}
	<-lv.handled
}

// Delete stops the instance if needed and removes it and its data.
//
// The intent is persisted first (Transition "delete", restarts off): a
// daemon killed at any later step finishes the delete when it starts
// (discardAtLoad) instead of finding a dead VM and restarting it.
func (m *Manager) Delete(ctx context.Context, ref string) (err error) {
	_, err = m.deleteIf(ctx, ref, "deleted", nil)
	return err
}

// deleteIf is Delete; when check is non-nil it runs under the operation
// lock on the current metadata and the delete goes ahead only if it returns
// true. reason is the Deleted event's reason.
func (m *Manager) deleteIf(ctx context.Context, ref, reason string, check func(Metadata) bool) (done bool, err error) {
	defer m.observe("delete", time.Now(), &err)
	e, err := m.resolve(ref)
	if err != nil {
		return false, err
	}
	e.op.Lock()
	defer e.op.Unlock()
	e.mu.Lock()
	deleted, id := e.deleted, e.meta.ID
	e.mu.Unlock()
	if deleted {
		return false, fmt.Errorf("%w: %s", ErrNotFound, ref)
	}
	if check != nil {
		e.mu.Lock()
		ok := check(e.meta)
		e.mu.Unlock()
		if !ok {
			return false, nil
		}
	}
	from := m.currentState(ctx, e)
	if err := m.checkAction(e, ActionDelete, from); err != nil {
		return false, err // a Template with forks
	}
	m.cancelCompression(e)
	e.mu.Lock()
	e.meta.RestartStatus.MarkManualStop() // no restart races the delete
	e.meta.Transition = transitionDelete
	perr := m.persist(e)
	broken := e.broken != ""
	lv := e.live
	e.mu.Unlock()
	if perr != nil && !broken {
		// Deleting is how users free space: go on, but say that a crash
		// before the end would leave the instance (stopped) behind.
		m.log.Warn("delete: cannot persist the delete intent; continuing", "id", id, "err", perr)
	}
	m.step("delete:intent")
	if lv != nil {
		// Delete does not need a graceful stop: kill at once.
		why := "deleted"
		lv.stopReason.Store(&why)
		_ = lv.vm.Kill()
		<-lv.handled
	} else {
		// No handle (re-adoption failed, or metadata unreadable): a VMM
		// may still run in the dir.
		m.killDirVMM(ctx, id)
	}
	m.step("delete:killed")
	m.mu.Lock()
	delete(m.entries, id)
	m.mu.Unlock()
	m.release(id, resources.ReleaseAll)
	e.mu.Lock()
	e.deleted = true
	e.mu.Unlock()
	if err := m.removeInstanceDir(id); err != nil {
		return true, err
	}
	m.detachAll(ctx, id)
	m.forkGone(e)
	m.publish(id, from, "", reason)
	return true, nil
}

// killDirVMM kills a VMM running in the instance's dir that the manager
// holds no handle on.
func (m *Manager) killDirVMM(ctx context.Context, id string) {
	vm, err := m.cfg.Hypervisor.Attach(ctx, m.dir(id))
	if err != nil {
		return
	}
	if err := vm.Kill(); err != nil {
		m.log.Warn("kill vmm", "id", id, "err", err)
	}
	vm.Close()
}

// removeInstanceDir releases the instance's network and removes its dir:
// renamed first so a crash mid-removal never leaves a half-deleted instance
// that still loads (load removes .deleted-* dirs).
func (m *Manager) removeInstanceDir(id string) error {
	m.releaseNetwork(id)
	trash := filepath.Join(m.cfg.Paths.InstancesDir(), ".deleted-"+id)
	if err := os.Rename(m.dir(id), trash); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete instance: %w", err)
	}
	m.step("delete:renamed")
	if err := os.RemoveAll(trash); err != nil {
		m.log.Warn("remove deleted instance data", "id", id, "err", err)
	}
	return nil
}

// discardAtLoad removes an instance a previous daemon was killed in the
// middle of deleting, or of creating as a fork (called from load; it is
// never registered): its VMM is killed, its network released, its dir
// removed. A fork's source is restored by finishReturn.
func (m *Manager) discardAtLoad(ctx context.Context, e *entry, what string) {
	id := e.meta.ID
	m.killDirVMM(ctx, id)
	if err := m.removeInstanceDir(id); err != nil {
		m.log.Error("remove "+what, "id", id, "err", err)
		return
	}
	m.detachAll(ctx, id)
	m.log.Info("removed "+what, "id", id, "name", e.meta.Name)
}
