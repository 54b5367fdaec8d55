package instances

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"hypeman/internal/hypervisor"
	"hypeman/internal/instances/state"
)

// standbyDir is where an instance's standby snapshot lives.
const standbyDir = "standby"

// Transition markers persisted in Metadata.Transition.
const (
	transitionStandby = "standby"
	transitionRestore = "restore"
	transitionDelete  = "delete" // see Delete and discardAtLoad
	transitionFork    = "fork"   // on a fork until it reaches its target (discardAtLoad)
)

// Pause freezes a Running instance's vCPUs (memory stays resident).
func (m *Manager) Pause(ctx context.Context, ref string) (_ *Instance, err error) {
	defer m.observe("pause", time.Now(), &err)
	e, lv, from, err := m.lockLive(ctx, ref, ActionPause)
	if err != nil {
		return nil, err
	}
	defer e.op.Unlock()
	if err := lv.vm.Pause(ctx); err != nil {
		return nil, fmt.Errorf("pause: %w", err)
	}
	m.logf(e.meta.ID, "paused")
	m.publish(e.meta.ID, from, state.Paused, "pause")
	return m.view(ctx, e)
}

// Resume continues a Paused instance.
func (m *Manager) Resume(ctx context.Context, ref string) (_ *Instance, err error) {
	defer m.observe("resume", time.Now(), &err)
	e, lv, _, err := m.lockLive(ctx, ref, ActionResume)
	if err != nil {
		return nil, err
	}
	defer e.op.Unlock()
	if err := lv.vm.Resume(ctx); err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	m.logf(e.meta.ID, "resumed")
	to := m.currentState(ctx, e)
	m.publish(e.meta.ID, state.Paused, to, "resume")
	return m.view(ctx, e)
}

// lockLive resolves ref, takes its op lock, checks the action and returns
// the live VM. On error the lock is released.
func (m *Manager) lockLive(ctx context.Context, ref string, a Action) (*entry, *liveVM, state.State, error) {
	e, err := m.resolve(ref)
	if err != nil {
		return nil, nil, "", err
	}
	e.op.Lock()
	st := m.currentState(ctx, e)
	if err := checkTransition(a, st); err != nil {
		e.op.Unlock()
		return nil, nil, "", err
	}
	e.mu.Lock()
	lv := e.live
	e.mu.Unlock()
	if lv == nil {
		e.op.Unlock()
		return nil, nil, "", &TransitionError{Action: a, State: st, Allowed: Allowed(st)}
	}
	return e, lv, st, nil
}

// Standby saves a Running (or Paused) instance's memory and device state to
// disk and ends its VMM: Running → Paused → Standby. Restore continues it.
// p chooses how the state is compressed (see compression.go).
func (m *Manager) Standby(ctx context.Context, ref string, p StandbyParams) (_ *Instance, err error) {
	defer m.observe("standby", time.Now(), &err)
	if err := compressionArg("", p.Compression); err != nil {
		return nil, err
	}
	if err := delayArg("compression_delay", p.CompressionDelay); err != nil {
		return nil, err
	}
	e, lv, from, err := m.lockLive(ctx, ref, ActionStandby)
	if err != nil {
		return nil, err
	}
	defer e.op.Unlock()
	e.mu.Lock()
	policy := e.meta.SnapshotPolicy
	e.mu.Unlock()
	comp, delay := m.standbyPlan(p, policy)
	if err := m.standbyLocked(ctx, e, lv, from, comp, delay); err != nil {
		return nil, err
	}
	return m.view(ctx, e)
}

// standbyLocked saves e's state compressed as comp says: at once, or after
// delay by a background job (the save itself is then uncompressed).
func (m *Manager) standbyLocked(ctx context.Context, e *entry, lv *liveVM, from state.State, comp hypervisor.Compression, delay time.Duration) error {
	id := e.meta.ID
	snap := filepath.Join(m.dir(id), standbyDir)
	m.cancelCompression(e) // nothing should be pending for a live VM; be sure
	// A leftover from an interrupted standby or a committed restore.
	if err := os.RemoveAll(snap); err != nil {
		return fmt.Errorf("standby: clear old snapshot: %w", err)
	}
	if err := m.setTransition(e, transitionStandby); err != nil {
		return err
	}
	start := time.Now()
	if from != state.Paused {
		if err := lv.vm.Pause(ctx); err != nil {
			m.setTransition(e, "")
			return fmt.Errorf("standby: pause: %w", err)
		}
		m.publish(id, from, state.Paused, "standby: paused")
	}
	m.step("standby:paused")
	saveAs := comp
	if delay > 0 {
		saveAs = hypervisor.Compression{}
	}
	info, err := lv.vm.SaveState(ctx, snap, hypervisor.SaveOptions{Compression: saveAs})
	if err != nil {
		// Roll back to the old state: the VM is paused and intact.
		m.setTransition(e, "")
		if from != state.Paused {
			if rerr := lv.vm.Resume(context.WithoutCancel(ctx)); rerr == nil {
				m.publish(id, state.Paused, from, "standby failed: resumed")
			}
		}
		m.logf(id, "standby failed: %v", err)
		return fmt.Errorf("standby: save state: %w", err)
	}
	m.step("standby:saved")
	// Commit point: the snapshot is durable; record it before ending the VMM.
	sc := savedCompression(info)
	if delay > 0 {
		at := time.Now().Add(delay).UTC()
		sc.Compression, sc.State, sc.CompressAt = comp, CompressionStateCompressing, &at
	}
	e.mu.Lock()
	e.meta.HasSnapshot = true
	e.meta.Transition = ""
	e.meta.StandbyCompression = sc
	err = m.persist(e)
	e.mu.Unlock()
	if err != nil {
		return err
	}
	m.step("standby:committed")
	lv.standby.Store(true)
	lv.agentConn.close()
	_ = lv.vm.Kill()
	<-lv.handled
	m.logf(id, "standby: saved %d MiB guest in %s (state %d bytes, %s)", info.MemoryMiB, time.Since(start).Round(time.Millisecond), info.StateBytes, info.Compression)
	if delay > 0 {
		m.logf(id, "standby: the state will be compressed (%s) at %s", comp, sc.CompressAt.Format(time.RFC3339))
	}
	m.publish(id, state.Paused, state.Standby, "standby")
	m.scheduleCompression(e)
	return nil
}

// setTransition persists the in-progress marker.
func (m *Manager) setTransition(e *entry, t string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.meta.Transition = t
	return m.persist(e)
}

// Restore continues a Standby instance where it was: Standby → Paused →
// Running. The program continues; its writable disk and logs are intact.
func (m *Manager) Restore(ctx context.Context, ref string) (_ *Instance, err error) {
	defer m.observe("restore", time.Now(), &err)
	e, err := m.resolve(ref)
	if err != nil {
		return nil, err
	}
	e.op.Lock()
	defer e.op.Unlock()
	st, err := m.wakeTemplate(e, m.currentState(ctx, e))
	if err != nil {
		return nil, err
	}
	if err := checkTransition(ActionRestore, st); err != nil {
		return nil, err
	}
	if err := m.restoreLocked(ctx, e, true, false); err != nil {
		return nil, err
	}
	return m.view(ctx, e)
}

// restoreLocked restores e from its standby snapshot (caller holds e.op)
// and resumes it when resume is set (else it stays Paused).
// readdress makes the guest take the instance's current lease (the saved
// state carries the address it had when saved).
func (m *Manager) restoreLocked(ctx context.Context, e *entry, resume, readdress bool) error {
	id := e.meta.ID
	dir := m.dir(id)
	e.mu.Lock()
	meta := e.meta
	e.mu.Unlock()
	if err := checkVolumeFiles(meta.Volumes); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := m.admit(ctx, meta, true); err != nil {
		return err
	}
	defer m.settleAdmission(e)
	lease, err := m.leaseFor(ctx, meta)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := m.setTransition(e, transitionRestore); err != nil {
		return err
	}
	rc := hypervisor.RestoreConfig{ID: id, Dir: dir, SnapshotDir: filepath.Join(dir, standbyDir)}
	if lease != nil && readdress {
		rc.Net = lease.NetConfig()
		rc.Net.MAC = "" // the saved MAC stays in the device; the guest changes it
	}
	// A pending compression would compete with the restore for the CPU,
	// and the state is consumed anyway (a failed restore reschedules it).
	m.cancelCompression(e)
	vm, err := m.cfg.Hypervisor.Restore(ctx, rc)
	if err != nil {
		m.setTransition(e, "")
		m.logf(id, "restore failed: %v", err)
		m.scheduleCompression(e)
		return fmt.Errorf("restore: %w", err)
	}
	m.step("restore:loaded")
	lv := newLiveVM(vm)
	lv.started.Store(true) // the program was running when its state was saved
	lv.agent.Store(true)
	// Commit point: from here the VMM is the instance's truth, the
	// snapshot is consumed (a standby never restores twice). Transition
	// stays "restore" until the VM is resumed, so a daemon killed before
	// the resume resumes it on restart.
	e.mu.Lock()
	e.live, e.attachErr = lv, ""
	e.meta.HasSnapshot = false
	e.meta.StandbyCompression = StandbyCompression{}
	e.meta.StoppedAt, e.meta.ExitCode, e.meta.ExitMessage = nil, nil, nil
	now := time.Now().UTC()
	e.meta.RestoredAt = &now
	err = m.persist(e)
	e.mu.Unlock()
	m.startWatcher(e, lv, true)
	if err != nil {
		return err
	}
	m.publish(id, state.Standby, state.Paused, "restore: state loaded")
	m.step("restore:committed")
	if resume {
		if err := vm.Resume(ctx); err != nil {
			return fmt.Errorf("restore: resume: %w", err)
		}
		m.publish(id, state.Paused, state.Running, "restore")
		if readdress {
			m.readdressGuest(ctx, e, lv)
		}
	}
	if err := m.setTransition(e, ""); err != nil {
		return err
	}
	m.logf(id, "restored from standby")
	_ = os.RemoveAll(filepath.Join(dir, standbyDir))
	return nil
}

// adoptTransition finishes or rolls back a standby/restore that a previous
// daemon was killed in the middle of (called from adopt, before watchers
// publish anything). The rule: a committed snapshot (HasSnapshot) wins over
// a live VMM; an uncommitted one is discarded and the VM continues.
func (m *Manager) adoptTransition(ctx context.Context, e *entry) {
	t := e.meta.Transition
	if t == "" && !(e.meta.HasSnapshot && e.live != nil) {
		return
	}
	id := e.meta.ID
	lv := e.live
	switch {
	case e.meta.HasSnapshot && lv != nil:
		// Standby committed but the VMM was not ended yet, or a restore
		// that never committed: the snapshot is the truth → Standby.
		lv.standby.Store(true)
		_ = lv.vm.Kill()
		select {
		case <-lv.vm.Done():
		case <-time.After(10 * time.Second):
		}
		e.live = nil
		m.log.Info("finished interrupted operation: instance is in standby", "id", id, "transition", t)
	case !e.meta.HasSnapshot && lv != nil:
		// Standby not committed (or restore committed): the VM is intact
		// and merely paused → continue it.
		if rs, err := lv.vm.Status(ctx); err == nil && rs == hypervisor.RunStatePaused && e.meta.ReturnTo != state.Paused {
			if err := lv.vm.Resume(ctx); err != nil {
				m.log.Error("resume after interrupted operation", "id", id, "err", err)
			}
		}
		m.log.Info("rolled back interrupted operation: instance continues", "id", id, "transition", t)
	case lv == nil && t == transitionStandby && !e.meta.HasSnapshot:
		// The VMM died before the snapshot was committed: it is stopped.
		m.log.Warn("vmm died during an interrupted standby", "id", id)
	}
	if t == transitionStandby && !e.meta.HasSnapshot {
		_ = os.RemoveAll(filepath.Join(m.dir(id), standbyDir))
	}
	e.meta.Transition = ""
	if err := m.persist(e); err != nil {
		m.log.Error("persist after interrupted operation", "id", id, "err", err)
	}
}
