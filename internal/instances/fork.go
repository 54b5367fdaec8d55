package instances

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"hypeman/internal/childproc"
	"hypeman/internal/hypervisor"
	"hypeman/internal/instances/state"
	"hypeman/internal/resources"
)

// ForkParams is a fork request.
type ForkParams struct {
	Name string
	// FromRunning allows forking a Running instance: it is put on standby,
	// cloned, and both are restored.
	FromRunning bool
	// TargetState is the fork's state when Fork returns: Running, Standby or
	// Stopped. "" = the source's state (Running for a Running or Paused
	// source).
	TargetState state.State
}

// Fork clones an instance: new id and name, its own copy of the writable
// disk and its own serial log. From Stopped the fork is a disk clone; from
// Standby (or Running with FromRunning) the fork continues the same memory
// state.
func (m *Manager) Fork(ctx context.Context, ref string, p ForkParams) (_ *Instance, err error) {
	defer m.observe("fork", time.Now(), &err)
	if err := ValidateName(p.Name); err != nil {
		return nil, err
	}
	switch p.TargetState {
	case "", state.Running, state.Standby, state.Stopped:
	default:
		return nil, &InvalidArgumentError{Field: "target_state", Reason: "must be Running, Standby or Stopped"}
	}
	src, err := m.resolve(ref)
	if err != nil {
		return nil, err
	}
	if err := m.reserveName(p.Name); err != nil {
		return nil, err
	}
	defer m.releaseName(p.Name)

	src.op.Lock()
	defer src.op.Unlock()
	from := m.currentState(ctx, src)
	if err := checkTransition(ActionFork, from); err != nil {
		return nil, err
	}
	if (from == state.Running || from == state.Paused) && !p.FromRunning {
		return nil, &TransitionError{Action: ActionFork, State: from, Allowed: Allowed(from)}
	}
	// Default: the source's own state (a Paused source continues Running).
	target := p.TargetState
	if target == "" {
		switch from {
		case state.Stopped, state.Standby:
			target = from
		case state.Template:
			target = state.Standby
		default:
			target = state.Running
		}
	}
	if from == state.Stopped && target == state.Standby {
		return nil, &InvalidArgumentError{Field: "target_state", Reason: "a Stopped instance has no memory state to fork into Standby"}
	}
	src.mu.Lock()
	srcMeta := src.meta
	src.mu.Unlock()
	if err := refuseWritableVolumes(srcMeta, "fork"); err != nil {
		return nil, err
	}

	// From Running: standby the source first, and restore it afterwards
	// whatever happens to the fork. ReturnTo is persisted first, so a
	// daemon killed anywhere in between restores the source on start.
	if from == state.Running || from == state.Paused {
		src.mu.Lock()
		lv, policy := src.live, src.meta.SnapshotPolicy
		src.mu.Unlock()
		if lv == nil {
			return nil, &TransitionError{Action: ActionFork, State: from, Allowed: Allowed(from)}
		}
		comp, delay := m.standbyPlan(StandbyParams{}, policy)
		if err := m.setReturnTo(src, from); err != nil {
			return nil, fmt.Errorf("fork: %w", err)
		}
		if err := m.standbyLocked(ctx, src, lv, from, comp, delay); err != nil {
			m.setReturnTo(src, "")
			return nil, fmt.Errorf("fork: standby source: %w", err)
		}
		defer func() {
			if rerr := m.returnFromStandby(context.WithoutCancel(ctx), src); rerr != nil && err == nil {
				err = fmt.Errorf("fork: restore source: %w", rerr)
			}
		}()
	}
	return m.forkLocked(ctx, src, p.Name, target)
}

// setReturnTo persists the state a temporarily stopped instance returns to.
func (m *Manager) setReturnTo(e *entry, st state.State) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.meta.ReturnTo = st
	return m.persist(e)
}

// returnFromStandby restores an instance put on standby for the length of
// another operation to its ReturnTo state and clears ReturnTo (caller holds
// e.op). The instance must be in Standby, or already back (a daemon killed
// after the restore committed). If the restore fails the instance stays in
// Standby, visible, for the user to restore; it is not retried.
func (m *Manager) returnFromStandby(ctx context.Context, e *entry) error {
	e.mu.Lock()
	id, to := e.meta.ID, e.meta.ReturnTo
	e.mu.Unlock()
	var err error
	if m.currentState(ctx, e) == state.Standby {
		if err = m.restoreLocked(ctx, e, to != state.Paused, false); err != nil {
			m.log.Error("restore instance after a temporary standby", "id", id, "err", err)
		}
	}
	if cerr := m.setReturnTo(e, ""); err == nil {
		err = cerr
	}
	return err
}

// finishReturn completes a temporary standby a previous daemon was killed
// in the middle of (called from load, after adopt and the removal of half
// forks).
func (m *Manager) finishReturn(ctx context.Context, e *entry) {
	e.op.Lock()
	defer e.op.Unlock()
	if err := m.returnFromStandby(ctx, e); err != nil {
		m.log.Error("finish interrupted fork: source not restored", "id", e.meta.ID, "err", err)
		return
	}
	m.log.Info("finished interrupted fork: source restored", "id", e.meta.ID, "state", m.currentState(ctx, e))
}

// forkLocked clones src (op lock held; src is Stopped or Standby).
func (m *Manager) forkLocked(ctx context.Context, src *entry, name string, target state.State) (*Instance, error) {
	src.mu.Lock()
	sm := src.meta
	src.mu.Unlock()
	fs := forkSource{meta: sm, diskDir: m.dir(sm.ID)}
	if sm.IsTemplate {
		fs.template = sm.ID // templates.go: the fork counts toward it
	}
	if sm.HasSnapshot {
		fs.stateDir = filepath.Join(m.dir(sm.ID), standbyDir)
		fs.state = sm.StandbyCompression
	}
	return m.forkFrom(ctx, fs, name, target)
}

// forkSource is what a fork is made from: an instance's (or a snapshot's)
// metadata, the dir holding its disks, and optionally a saved VM state.
type forkSource struct {
	meta     Metadata
	diskDir  string
	stateDir string // "" = disk-only
	// state describes the saved state in stateDir (a fork kept in Standby
	// inherits it, a pending delayed compression included).
	state StandbyCompression
	// template is the ID of the Template forked from ("" = not one).
	template string
}

// forkFrom creates a new instance from src and brings it to target.
func (m *Manager) forkFrom(ctx context.Context, src forkSource, name string, target state.State) (*Instance, error) {
	sm := src.meta
	id := m.uniqueID()
	dir := m.dir(id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("fork: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
			m.release(id, resources.ReleaseAll)
		}
	}()
	if err := refuseWritableVolumes(sm, "fork"); err != nil {
		return nil, err
	}
	for _, f := range deriveDisks(src.diskDir, "", sm).Files {
		if err := copySparse(ctx, filepath.Join(src.diskDir, f), filepath.Join(dir, f)); err != nil {
			return nil, fmt.Errorf("fork: copy %s: %w", f, err)
		}
	}
	m.step("fork:copied")
	// The fork mounts the same read-only volumes (overlay disks were
	// copied above): recorded in the store before the fork exists, undone
	// if it is not created (the start-up reconcile covers a crash).
	vols, err := m.reattachVolumes(ctx, id, sm.Volumes, "the fork's source "+sm.Name)
	if err != nil {
		return nil, fmt.Errorf("fork: %w", err)
	}
	defer func() {
		if !ok && len(vols) > 0 {
			m.detachAll(ctx, id)
		}
	}()
	now := time.Now().UTC()
	meta := Metadata{
		ID: id, Name: name, Image: sm.Image, ImageDigest: sm.ImageDigest,
		MemoryBytes: sm.MemoryBytes, Size: sm.Size, VCPUs: sm.VCPUs,
		OverlayBytes: sm.OverlayBytes, OverlaySize: sm.OverlaySize, Limits: sm.Limits,
		Env: maps.Clone(sm.Env), Entrypoint: slices.Clone(sm.Entrypoint), Cmd: slices.Clone(sm.Cmd),
		Tags: maps.Clone(sm.Tags), SkipGuestAgent: sm.SkipGuestAgent, StopTimeout: sm.StopTimeout,
		WorkingDir: sm.WorkingDir,
		CreatedAt:  now, Hypervisor: sm.Hypervisor, Platform: sm.Platform, ForkedFrom: sm.ID,
		// Same policies, clean status: a fork starts its own history.
		RestartPolicy: sm.RestartPolicy, HealthCheck: sm.HealthCheck, AutoStandby: sm.AutoStandby,
		HealthStatus:   initialHealth(sm.HealthCheck),
		SnapshotPolicy: sm.SnapshotPolicy,
		Volumes:        vols,
		ForkOfTemplate: src.template,
		// Until the fork reaches its target: a daemon killed before
		// then removes it on start.
		Transition: transitionFork,
	}
	if src.stateDir != "" && target == state.Standby {
		if err := copyTree(ctx, src.stateDir, filepath.Join(dir, standbyDir)); err != nil {
			return nil, fmt.Errorf("fork: copy snapshot: %w", err)
		}
		meta.HasSnapshot = true
		meta.StandbyCompression = src.state
	}
	if err := m.admit(ctx, meta, target == state.Running); err != nil {
		return nil, err
	}
	e := &entry{meta: meta}
	e.op.Lock()
	defer e.op.Unlock()
	e.mu.Lock()
	err = m.persist(e)
	e.mu.Unlock()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.entries[id] = e
	m.mu.Unlock()
	m.syncForkCount(src.template)
	ok = true
	created := state.Stopped
	if meta.HasSnapshot {
		created = state.Standby
	}
	m.logf(id, "forked from %s (%s)", sm.Name, sm.ID)
	m.publish(id, "", created, "forked from "+sm.ID)
	m.scheduleCompression(e) // a pending compression comes along with the state
	m.step("fork:created")

	switch {
	case target == state.Running && src.stateDir != "":
		lease, err := m.leaseFor(ctx, meta)
		if err != nil {
			return nil, m.failFork(ctx, e, fmt.Errorf("fork: %w", err))
		}
		rc := hypervisor.RestoreConfig{ID: id, Dir: dir, SnapshotDir: src.stateDir}
		if lease != nil {
			rc.Net = lease.NetConfig()
			rc.Net.MAC = "" // the saved MAC stays in the device; the guest changes it
		}
		vm, err := m.cfg.Hypervisor.Restore(ctx, rc)
		if err != nil {
			return nil, m.failFork(ctx, e, fmt.Errorf("fork: restore: %w", err))
		}
		lv := newLiveVM(vm)
		lv.started.Store(true)
		lv.agent.Store(true)
		t := time.Now().UTC()
		e.mu.Lock()
		e.live = lv
		e.meta.StartedAt, e.meta.RestoredAt = &t, &t
		err = m.persist(e)
		e.mu.Unlock()
		m.startWatcher(e, lv, true)
		if err != nil {
			return nil, err
		}
		if err := vm.Resume(ctx); err != nil {
			return nil, m.failFork(ctx, e, fmt.Errorf("fork: resume: %w", err))
		}
		m.publish(id, state.Stopped, state.Running, "fork restored")
		m.readdressGuest(ctx, e, lv)
	case target == state.Running:
		img, err := m.cfg.Images.Resolve(ctx, meta.Image)
		if err != nil {
			return nil, m.failFork(ctx, e, fmt.Errorf("fork: %w", err))
		}
		if err := m.boot(ctx, e, img); err != nil {
			return nil, m.failFork(ctx, e, err)
		}
	}
	m.step("fork:started")
	if err := m.setTransition(e, ""); err != nil {
		return nil, m.failFork(ctx, e, fmt.Errorf("fork: %w", err))
	}
	m.step("fork:done")
	return m.view(ctx, e)
}

// failFork removes a fork that could not reach its target state.
func (m *Manager) failFork(ctx context.Context, e *entry, cause error) error {
	e.mu.Lock()
	lv, id := e.live, e.meta.ID
	e.deleted = true
	e.mu.Unlock()
	if lv != nil {
		_ = lv.vm.Kill()
		<-lv.handled
	}
	m.releaseNetwork(id)
	m.mu.Lock()
	delete(m.entries, id)
	m.mu.Unlock()
	m.release(id, resources.ReleaseAll)
	os.RemoveAll(m.dir(id))
	m.detachAll(ctx, id)
	m.forkGone(e)
	m.publish(id, state.Stopped, "", "fork failed")
	return cause
}

// copySparse copies a disk image keeping holes (and sharing extents where
// the filesystem supports reflinks), so a 10 GB sparse overlay copies in ms.
func copySparse(ctx context.Context, src, dst string) error {
	out, err := childproc.CommandContext(ctx, "cp", "--reflink=auto", "--sparse=always", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// copyTree copies a directory (snapshot) the same way.
func copyTree(ctx context.Context, src, dst string) error {
	out, err := childproc.CommandContext(ctx, "cp", "-r", "--reflink=auto", "--sparse=always", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
