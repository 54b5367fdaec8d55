package instances

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/hypervisor"
	"hypeman/internal/instances/state"
	"hypeman/internal/rotlog"
)

// liveVM is a VMM process the manager holds a handle on.
type liveVM struct {
	vm         hypervisor.VM
	started    atomic.Bool // program-start marker seen this boot
	agent      atomic.Bool // agent-ready marker seen this boot
	exit       atomic.Pointer[guestconfig.Exit]
	stopReason atomic.Pointer[string] // set when hypeman itself ends the VM
	handled    chan struct{}          // closed once the exit is recorded
	launchedAt time.Time              // zero for re-adopted VMs
	// standby is set when the VMM is ended on purpose after its state was
	// saved: its exit is not a program exit and records no exit info.
	standby atomic.Bool
	// agentConn is the VM's shared guest agent connection.
	agentConn agentSlot
	// rotateErr is the last serial log rotation failure (logged once).
	rotateErr atomic.Pointer[string]
}

func newLiveVM(vm hypervisor.VM) *liveVM {
	return &liveVM{vm: vm, handled: make(chan struct{})}
}

func (lv *liveVM) programStarted() bool { return lv.started.Load() }
func (lv *liveVM) agentReady() bool     { return lv.agent.Load() }

// serialPollInterval is how often the watcher looks for new console output.
// Reading a file every 50 ms costs nothing measurable and keeps marker →
// state-change latency low without inotify plumbing.
const serialPollInterval = 50 * time.Millisecond

// startWatcher follows lv's serial log for markers and records its exit.
// adopted means the VM was running before this daemon started: markers
// already in the log are replayed silently (no events for the past).
func (m *Manager) startWatcher(e *entry, lv *liveVM, adopted bool) {
	e.mu.Lock()
	id, offset := e.meta.ID, e.meta.BootSerialOffset
	e.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.watch(e, id, lv, offset, adopted)
	}()
}

func (m *Manager) watch(e *entry, id string, lv *liveVM, offset int64, adopted bool) {
	path := filepath.Join(m.dir(id), hypervisor.SerialLogName)
	r := rotlog.NewReader(path, offset)
	defer r.Close()
	silent := adopted
	onLine := func(b []byte) {
		line := string(b)
		switch {
		case strings.Contains(line, guestconfig.MarkerProgramStart):
			if !lv.started.Swap(true) {
				m.recordMarker(e, lv, func(meta *Metadata) *bool { return &meta.ProgramStarted })
				if !silent {
					m.logf(id, "program started")
					if !lv.launchedAt.IsZero() {
						m.cfg.Metrics.ObserveTimeToRunning(time.Since(lv.launchedAt))
					}
				}
				if !silent && (!m.cfg.RequireAgent || lv.agentReady() || m.skipAgent(e)) {
					m.publish(id, state.Initializing, state.Running, "program started")
				}
			}
		case strings.Contains(line, guestconfig.MarkerAgentReady):
			if lv.agent.Swap(true) {
				break
			}
			m.recordMarker(e, lv, func(meta *Metadata) *bool { return &meta.AgentReady })
			if !silent && m.cfg.RequireAgent && lv.programStarted() && !m.skipAgent(e) {
				m.publish(id, state.Initializing, state.Running, "guest agent ready")
			}
		default:
			if ex, ok := guestconfig.ParseExit(line); ok {
				lv.exit.Store(&ex)
			}
		}
	}
	ticker := time.NewTicker(serialPollInterval)
	defer ticker.Stop()
	for {
		if err := r.Poll(onLine); err != nil {
			m.log.Warn("read serial log", "id", id, "err", err)
		}
		silent = false
		m.rotateSerial(id, lv, path)
		select {
		case <-lv.vm.Done():
			m.step("vm:exited")
			r.Poll(onLine) // drain what the guest printed last
			r.Flush(onLine)
			m.recordExit(e, id, lv)
			return
		case <-m.closed:
			return
		case de := <-lv.vm.IOErrors():
			m.recordIOError(id, lv, de)
		case <-ticker.C:
		}
	}
}

// recordIOError logs and publishes a guest stopped by a failed disk
// request (the VMM paused it; Resume retries the request).
func (m *Manager) recordIOError(id string, lv *liveVM, de hypervisor.DiskError) {
	msg := ioErrorMessage([]hypervisor.DiskError{de}, nil)
	m.log.Warn("guest paused by a disk I/O error", "id", id, "disk", de.File, "reason", de.Reason)
	m.logf(id, "paused by the vmm: %s", msg)
	from := state.Initializing
	if lv.programStarted() {
		from = state.Running
	}
	m.publish(id, from, state.Paused, msg)
}

// ioErrorMessage explains an io-error pause (state_error): which disk, why,
// and what to do.
func ioErrorMessage(errs []hypervisor.DiskError, err error) string {
	if err != nil || len(errs) == 0 {
		return "guest paused by a disk I/O error; free space on the host (or fix the disk) and resume"
	}
	parts := make([]string, 0, len(errs))
	noSpace := false
	for _, de := range errs {
		parts = append(parts, fmt.Sprintf("guest I/O error on disk %s: %s", diskName(de.File), de.Reason))
		noSpace = noSpace || de.NoSpace
	}
	fix := "fix the host disk and resume"
	if noSpace {
		fix = "free space on the host filesystem and resume"
	}
	return strings.Join(parts, "; ") + "; " + fix
}

// diskName names an instance disk by its role.
func diskName(file string) string {
	switch file {
	case overlayFile:
		return "overlay"
	case configFile:
		return "config"
	}
	if strings.HasPrefix(file, "volume-overlay-") {
		return "volume overlay (" + file + ")"
	}
	return "image or volume (" + file + ")"
}

// recordMarker persists that lv's boot printed a marker (flag picks the
// Metadata field), unless the entry has moved on to another VM.
func (m *Manager) recordMarker(e *entry, lv *liveVM, flag func(*Metadata) *bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.live != lv || e.deleted || *flag(&e.meta) {
		return
	}
	*flag(&e.meta) = true
	if err := m.persist(e); err != nil {
		m.log.Warn("persist boot marker", "id", e.meta.ID, "err", err)
	}
}

func (m *Manager) skipAgent(e *entry) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.meta.SkipGuestAgent
}

// recordExit persists how the VM ended and publishes → Stopped.
func (m *Manager) recordExit(e *entry, id string, lv *liveVM) {
	defer close(lv.handled)
	lv.agentConn.close()
	from := state.Initializing
	if lv.programStarted() {
		from = state.Running
	}
	exit := lv.exit.Load()
	noExit := "vmm exited without a guest exit status (the VM crashed or was killed)"
	if r := lv.stopReason.Load(); r != nil {
		noExit = "stopped by hypeman (" + *r + "): the guest did not report an exit status before the VM ended"
	}
	reason := "vm exited: " + noExit
	if exit != nil {
		reason = "program exited: " + exit.Message
	}
	if !lv.standby.Load() {
		// Logged before the state becomes visible, so whoever sees
		// Stopped also finds the reason in the hypeman log.
		m.logf(id, "%s", reason)
	}
	e.mu.Lock()
	if e.live != lv {
		e.mu.Unlock()
		return
	}
	e.live = nil
	m.releaseOnExit(e)
	if lv.standby.Load() {
		e.mu.Unlock()
		lv.vm.Close()
		m.dropTAP(id)
		return // the standby operation records and publishes its own outcome
	}
	applyExit(&e.meta, exit, time.Now(), noExit)
	switch {
	case lv.stopReason.Load() != nil:
		e.meta.ExitKind = exitStoppedByHypeman
	case exit != nil:
		e.meta.ExitKind = exitCode
	default:
		e.meta.ExitKind = exitVMCrashed
	}
	deleted := e.deleted
	var err error
	if !deleted {
		err = m.persist(e)
	}
	e.mu.Unlock()
	lv.vm.Close()
	m.releaseNetwork(id)
	if deleted {
		return
	}
	if err != nil {
		m.log.Error("persist exit", "id", id, "err", err)
	}
	m.publish(id, from, state.Stopped, reason)
}

// rotateSerial rotates the VM's serial log once it reaches the configured
// size (see package rotlog: the VMM reopens it, no output is lost), and
// finishes a rotation a killed daemon left half done.
func (m *Manager) rotateSerial(id string, lv *liveVM, path string) {
	if m.cfg.SerialLogMaxBytes <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rotated, err := rotlog.Rotate(path, m.cfg.SerialLogMaxBytes, m.cfg.SerialLogFiles, func() error {
		return lv.vm.ReopenSerialLog(ctx)
	})
	if err != nil {
		// Retried at every poll; logged once until a rotation succeeds.
		if msg := err.Error(); lv.rotateErr.Swap(&msg) == nil {
			m.log.Warn("serial log rotation failed", "id", id, "err", err)
		}
		return
	}
	if rotated {
		lv.rotateErr.Store(nil)
	}
}

// scanExit finds the last exit marker in the serial log after offset (a
// logical offset: see package rotlog).
func scanExit(path string, offset int64) (*guestconfig.Exit, error) {
	r := rotlog.NewReader(path, offset)
	defer r.Close()
	var exit *guestconfig.Exit
	find := func(line []byte) {
		if ex, ok := guestconfig.ParseExit(string(line)); ok {
			exit = &ex
		}
	}
	if err := r.Poll(find); err != nil {
		return nil, err
	}
	r.Flush(find)
	if exit == nil {
		return nil, errors.New("no exit marker")
	}
	return exit, nil
}
