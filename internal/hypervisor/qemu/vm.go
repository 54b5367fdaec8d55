package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"hypeman/internal/hypervisor"
	"hypeman/internal/hypervisor/qemu/qmp"
	"hypeman/internal/procfs"
)

// ErrHandleClosed is returned by VM methods after Close.
var ErrHandleClosed = errors.New("vm handle closed")

// ErrMemoryExported is returned by Resume after SaveState with
// ExcludeMemory: the guest would write into the memory file the snapshot
// (and its clones) rely on.
var ErrMemoryExported = errors.New("the vm's memory file belongs to a snapshot saved without RAM: the vm cannot run again")

// killWait bounds how long Kill waits for the process to disappear.
const killWait = 10 * time.Second

// VM is a handle on one QEMU process. It implements hypervisor.VM; the
// concrete type also exposes the QMP client (events, migration).
type VM struct {
	drv   *Driver
	dir   string
	pf    PidFile
	child bool // launched by this process: exit observed by cmd.Wait
	log   *slog.Logger
	// done is closed when the process has exited. For an attached VM it is
	// driven by a pidfd watch that Close releases: after Close it may never
	// close.
	done      <-chan struct{}
	stopWatch func()
	qmpReady  time.Duration
	// saveHook, when set (tests), is called with the running stream size
	// after each chunk SaveState reads.
	saveHook func(streamed int64)

	// ioErrs carries BLOCK_IO_ERROR events that stopped the guest
	// (watchEvents); quit and eventsDone end that goroutine on Close.
	ioErrs     chan hypervisor.DiskError
	quit       chan struct{}
	eventsDone chan struct{}

	mu     sync.Mutex
	qmp    *qmp.Client
	closed bool
	// lostQMP: QEMU itself closed the QMP connection (it does so only
	// when exiting) and no new one has been made since.
	lostQMP bool
	exitErr error // child only: cmd.Wait result
	// memoryExported: SaveState with ExcludeMemory succeeded, so the
	// memory file belongs to that snapshot and Resume is refused.
	memoryExported bool
}

// newVM fills in the channels every handle needs.
func newVM(v *VM) *VM {
	v.ioErrs = make(chan hypervisor.DiskError, 4)
	v.quit = make(chan struct{})
	v.eventsDone = make(chan struct{})
	return v
}

var (
	_ hypervisor.VM            = (*VM)(nil)
	_ hypervisor.MemoryBalloon = (*VM)(nil)
)

// Pid implements hypervisor.VM.
func (v *VM) Pid() int { return v.pf.Pid }

// Dir is the instance dir the VM runs in.
func (v *VM) Dir() string { return v.dir }

// Done implements hypervisor.VM.
func (v *VM) Done() <-chan struct{} { return v.done }

// QMPReadyAfter is how long QEMU took from exec to a negotiated QMP
// connection (0 for attached VMs).
func (v *VM) QMPReadyAfter() time.Duration { return v.qmpReady }

// ExitError is the wait status of a launched VM after Done (nil for a clean
// exit or for attached VMs, whose status is not observable).
func (v *VM) ExitError() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.exitErr
}

func (v *VM) exited() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
}

// QMP returns a live QMP client, reconnecting if the previous connection
// dropped while QEMU is still running. The client stays owned by the VM.
func (v *VM) QMP(ctx context.Context) (*qmp.Client, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil, ErrHandleClosed
	}
	if v.exited() {
		return nil, fmt.Errorf("pid %d: %w", v.pf.Pid, hypervisor.ErrNotRunning)
	}
	if v.qmp != nil {
		select {
		case <-v.qmp.Done():
			if v.qmp.ClosedByPeer() {
				v.lostQMP = true
			}
			v.qmp.Close()
			v.qmp = nil
		default:
			return v.qmp, nil
		}
	}
	c, err := qmp.Dial(ctx, filepath.Join(v.dir, QMPSocketName), qmp.Options{Logger: v.log})
	if err != nil {
		if v.exited() {
			return nil, fmt.Errorf("pid %d: %w", v.pf.Pid, hypervisor.ErrNotRunning)
		}
		if v.lostQMP {
			// QEMU hung up and takes no new connection: it is on its
			// way out, its exit is not observed yet.
			return nil, fmt.Errorf("pid %d: %w: qemu closed its control channel: %w", v.pf.Pid, hypervisor.ErrExiting, err)
		}
		return nil, fmt.Errorf("reconnect qmp: %w", err)
	}
	v.qmp, v.lostQMP = c, false
	return c, nil
}

// execute runs a QMP command; if it fails because QEMU exited, the error
// wraps hypervisor.ErrNotRunning.
func (v *VM) execute(ctx context.Context, cmd string, args, result any) error {
	c, err := v.QMP(ctx)
	if err != nil {
		return err
	}
	err = c.Execute(ctx, cmd, args, result)
	// A write into a socket QEMU already closed fails with EPIPE (or
	// ECONNRESET) before our reader has seen the hang-up: the same exit.
	peerGone := errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
	if err != nil && (errors.Is(err, qmp.ErrClosed) || peerGone) {
		// The connection drops as QEMU exits; let Done catch up briefly.
		select {
		case <-v.done:
			return fmt.Errorf("%w: %w", hypervisor.ErrNotRunning, err)
		case <-time.After(200 * time.Millisecond):
		}
		if peerGone || c.ClosedByPeer() {
			return fmt.Errorf("%w: %w", hypervisor.ErrExiting, err)
		}
	}
	return err
}

// MapRunState maps a QMP RunState (query-status "status") to ours.
//
//	running                                   → running
//	prelaunch, inmigrate                      → created (not started yet)
//	paused, postmigrate, finish-migrate,
//	save-vm, restore-vm, suspended,
//	watchdog, debug, colo                     → paused (vCPUs stopped, resumable)
//	io-error                                  → io-error (stopped by a failed disk request)
//	shutdown, guest-panicked, internal-error  → shutdown (guest will not run again)
func MapRunState(status string) (hypervisor.RunState, error) {
	switch status {
	case "running":
		return hypervisor.RunStateRunning, nil
	case "prelaunch", "inmigrate":
		return hypervisor.RunStateCreated, nil
	case "paused", "postmigrate", "finish-migrate", "save-vm", "restore-vm",
		"suspended", "watchdog", "debug", "colo":
		return hypervisor.RunStatePaused, nil
	case "io-error":
		return hypervisor.RunStateIOError, nil
	case "shutdown", "guest-panicked", "internal-error":
		return hypervisor.RunStateShutdown, nil
	}
	return "", fmt.Errorf("unknown qemu run state %q", status)
}

// Status implements hypervisor.VM. Once QEMU has exited the error wraps
// hypervisor.ErrNotRunning.
func (v *VM) Status(ctx context.Context) (hypervisor.RunState, error) {
	var st struct {
		Status string `json:"status"`
	}
	if err := v.execute(ctx, "query-status", nil, &st); err != nil {
		return "", fmt.Errorf("qemu status: %w", err)
	}
	return MapRunState(st.Status)
}

// Pause implements hypervisor.VM (QMP stop).
func (v *VM) Pause(ctx context.Context) error {
	if err := v.execute(ctx, "stop", nil, nil); err != nil {
		return fmt.Errorf("qemu pause: %w", err)
	}
	return nil
}

// Resume implements hypervisor.VM (QMP cont). It is refused
// (ErrMemoryExported) after a SaveState with ExcludeMemory on this handle.
func (v *VM) Resume(ctx context.Context) error {
	v.mu.Lock()
	exported := v.memoryExported
	v.mu.Unlock()
	if exported {
		return fmt.Errorf("qemu resume: %w", ErrMemoryExported)
	}
	if err := v.execute(ctx, "cont", nil, nil); err != nil {
		return fmt.Errorf("qemu resume: %w", err)
	}
	return nil
}

// Shutdown implements hypervisor.VM: ACPI power button (system_powerdown),
// wait up to timeout for QEMU to exit, then Kill. It returns nil once the
// process is gone either way. If ctx ends first it returns ctx's error and
// leaves the VM running (the caller gave up waiting, not on the VM).
//
// The guest only reacts to the power button if its kernel has the ACPI
// button driver (a module in Debian's kernel) and something handles the
// event; the graceful path is the guest agent, this is the fallback.
func (v *VM) Shutdown(ctx context.Context, timeout time.Duration) error {
	if v.exited() {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, min(timeout, 5*time.Second))
	err := v.execute(pctx, "system_powerdown", nil, nil)
	cancel()
	if err != nil {
		v.log.Warn("system_powerdown failed, will kill after timeout", "err", err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-v.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("qemu shutdown: %w", ctx.Err())
	case <-t.C:
		v.log.Info("guest did not power off in time, killing", "timeout", timeout)
		return v.Kill()
	}
}

// Kill implements hypervisor.VM: SIGKILL to QEMU's process group (the VMM
// and any helper it spawned, e.g. a migration "cat"), then wait for Done.
// An attached VM is re-verified (pid + start time) first so a reused pid is
// never signalled.
func (v *VM) Kill() error {
	if v.exited() {
		return nil
	}
	v.mu.Lock()
	closed := v.closed
	v.mu.Unlock()
	if closed && !v.child {
		return ErrHandleClosed // the exit watch is gone; we could not confirm
	}
	target := v.pf.Pid
	if !v.child {
		if err := checkProcess(v.pf); err != nil {
			if errors.Is(err, errStale) {
				return v.waitDone()
			}
			return fmt.Errorf("qemu kill: %w", err)
		}
		st, err := procfs.ReadStat(v.pf.Pid)
		if err == nil && st.Pgrp != v.pf.Pid {
			// Not a group leader (launched by someone else): kill it alone.
			if err := syscall.Kill(v.pf.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("qemu kill: %w", err)
			}
			return v.waitDone()
		}
	}
	if err := syscall.Kill(-target, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("qemu kill: %w", err)
	}
	return v.waitDone()
}

func (v *VM) waitDone() error {
	select {
	case <-v.done:
		return nil
	case <-time.After(killWait):
		return fmt.Errorf("qemu kill: pid %d still alive after %v", v.pf.Pid, killWait)
	}
}

// Close implements hypervisor.VM: drop the QMP connection and the exit
// watch; the VM keeps running.
func (v *VM) Close() error {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return nil
	}
	v.closed = true
	c := v.qmp
	v.qmp = nil
	v.mu.Unlock()
	close(v.quit)
	if c != nil {
		c.Close()
	}
	<-v.eventsDone
	if v.stopWatch != nil {
		v.stopWatch()
	}
	return nil
}

// SetMemoryTarget implements hypervisor.MemoryBalloon (QMP balloon).
func (v *VM) SetMemoryTarget(ctx context.Context, target int64) error {
	if target <= 0 {
		return fmt.Errorf("qemu balloon: target %d bytes must be positive", target)
	}
	if err := v.execute(ctx, "balloon", map[string]any{"value": target}, nil); err != nil {
		return fmt.Errorf("qemu balloon: %w", balloonError(err))
	}
	return nil
}

// serialChardev is the id of the serial console's chardev (BuildArgs).
const serialChardev = "ser0"

// ReopenSerialLog implements hypervisor.VM with QMP chardev-change: QEMU
// swaps the serial console's file backend for a fresh SerialLogName
// (relative to its working directory, the instance dir). The switch happens
// between two writes of the serial device, so no byte is lost or doubled.
func (v *VM) ReopenSerialLog(ctx context.Context) error {
	args := map[string]any{
		"id": serialChardev,
		"backend": map[string]any{
			"type": "file",
			"data": map[string]any{"out": hypervisor.SerialLogName, "append": true},
		},
	}
	if err := v.execute(ctx, "chardev-change", args, nil); err != nil {
		return fmt.Errorf("qemu reopen serial log: %w", err)
	}
	return nil
}

// MemoryActual implements hypervisor.MemoryBalloon (QMP query-balloon).
func (v *VM) MemoryActual(ctx context.Context) (int64, error) {
	var r struct {
		Actual int64 `json:"actual"`
	}
	if err := v.execute(ctx, "query-balloon", nil, &r); err != nil {
		return 0, fmt.Errorf("qemu query-balloon: %w", balloonError(err))
	}
	return r.Actual, nil
}

// balloonError maps QEMU's DeviceNotActive (no balloon device) to
// hypervisor.ErrNoBalloon.
func balloonError(err error) error {
	var qe *qmp.Error
	if errors.As(err, &qe) && qe.Class == "DeviceNotActive" {
		return fmt.Errorf("%w: %w", hypervisor.ErrNoBalloon, err)
	}
	return err
}

// IOErrors implements hypervisor.VM.
func (v *VM) IOErrors() <-chan hypervisor.DiskError { return v.ioErrs }

// blockInfo is the part of a query-block entry the driver reads.
type blockInfo struct {
	Device   string `json:"device"`
	IOStatus string `json:"io-status"` // "ok", "failed", "nospace"; absent when not tracked
	Inserted *struct {
		File string `json:"file"`
	} `json:"inserted"`
}

func (b blockInfo) file() string {
	if b.Inserted == nil {
		return b.Device
	}
	return filepath.Base(b.Inserted.File)
}

// DiskErrors implements hypervisor.VM from query-block's io-status (QEMU
// tracks it for virtio-blk under the default werror=enospc policy and
// resets it on cont).
func (v *VM) DiskErrors(ctx context.Context) ([]hypervisor.DiskError, error) {
	var blocks []blockInfo
	if err := v.execute(ctx, "query-block", nil, &blocks); err != nil {
		return nil, fmt.Errorf("qemu disk errors: %w", err)
	}
	var out []hypervisor.DiskError
	for _, b := range blocks {
		switch b.IOStatus {
		case "", "ok":
		case "nospace":
			out = append(out, hypervisor.DiskError{File: b.file(), NoSpace: true, Reason: "no space left on device"})
		default:
			out = append(out, hypervisor.DiskError{File: b.file(), Reason: "I/O error"})
		}
	}
	return out, nil
}

// ioErrorEvent is BLOCK_IO_ERROR's data.
type ioErrorEvent struct {
	Device    string `json:"device"`
	Operation string `json:"operation"`
	Action    string `json:"action"` // "stop" when the guest was stopped
	NoSpace   bool   `json:"nospace"`
	Reason    string `json:"reason"`
}

// watchEvents forwards BLOCK_IO_ERROR events that stopped the guest to
// ioErrs, following QMP reconnects, until the VM exits or Close.
func (v *VM) watchEvents() {
	defer close(v.eventsDone)
	backoff := 50 * time.Millisecond
	for {
		v.mu.Lock()
		c, closed := v.qmp, v.closed
		v.mu.Unlock()
		if closed || v.exited() {
			return
		}
		if c != nil {
			for ev := range c.Events(context.Background()) {
				if ev.Name == "BLOCK_IO_ERROR" {
					v.forwardIOError(ev)
				}
			}
		}
		// The connection ended: QEMU is exiting, or it dropped and a later
		// command reconnects. Look again after a pause.
		select {
		case <-v.done:
			return
		case <-v.quit:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if _, err := v.QMP(ctx); err == nil {
			backoff = 50 * time.Millisecond
		}
		cancel()
	}
}

func (v *VM) forwardIOError(ev qmp.Event) {
	var d ioErrorEvent
	if err := json.Unmarshal(ev.Data, &d); err != nil || d.Action != "stop" {
		return
	}
	de := hypervisor.DiskError{File: d.Device, NoSpace: d.NoSpace, Reason: strings.ToLower(d.Reason)}
	if de.Reason == "" {
		de.Reason = "I/O error"
	}
	// Name the disk by its file: that is what the manager knows.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	var blocks []blockInfo
	if err := v.execute(ctx, "query-block", nil, &blocks); err == nil {
		for _, b := range blocks {
			if b.Device == d.Device {
				de.File = b.file()
			}
		}
	}
	cancel()
	v.log.Warn("guest stopped by a disk I/O error", "disk", de.File, "operation", d.Operation, "reason", de.Reason)
	select {
	case v.ioErrs <- de:
	default: // nobody reads: DiskErrors still reports it
	}
}
