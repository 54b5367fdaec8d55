package guestproc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// WaitFunc blocks until a started process exits and returns its status.
type WaitFunc func() (syscall.WaitStatus, error)

// DirectStarter starts commands and waits for them with exec.Cmd.Wait. It is
// for processes that are not PID 1 (tests, tools); PID 1 must use a Reaper.
type DirectStarter struct{}

// Start starts cmd.
func (DirectStarter) Start(cmd *exec.Cmd) (WaitFunc, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return func() (syscall.WaitStatus, error) {
		err := cmd.Wait()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			return 0, err
		}
		return cmd.ProcessState.Sys().(syscall.WaitStatus), nil
	}, nil
}

// Reaper is the single owner of wait(2) in a process that adopts orphans
// (PID 1 or a child subreaper). It reaps every child, dispatching the status
// of processes started through Start to their waiters and discarding the
// status of orphans. No one else may wait for children while a Reaper runs:
// a wait4(-1) and an exec.Cmd.Wait would steal each other's statuses.
//
// Commands started through Start must not need exec.Cmd.Wait: their stdio
// must be *os.File (or nil), so exec.Cmd starts no copying goroutines.
type Reaper struct {
	mu      sync.Mutex
	waiters map[int]chan syscall.WaitStatus
	// OnOrphan, if set, is called (under the reaper's lock) for every reaped
	// process nobody waits for.
	OnOrphan func(pid int, ws syscall.WaitStatus)
}

// NewReaper returns a Reaper; call Run to start reaping.
func NewReaper() *Reaper {
	return &Reaper{waiters: map[int]chan syscall.WaitStatus{}}
}

// Run reaps children on every SIGCHLD until ctx is done.
func (r *Reaper) Run(ctx context.Context) {
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, syscall.SIGCHLD)
	defer signal.Stop(ch)
	r.Reap() // children that exited before Notify
	// A periodic sweep protects against coalesced/missed SIGCHLDs.
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-t.C:
		}
		r.Reap()
	}
}

// Reap collects every child that has exited and reports whether children
// remain (false once wait4 says ECHILD).
func (r *Reaper) Reap() (childrenLeft bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil { // ECHILD
			return false
		}
		if pid <= 0 {
			return true
		}
		if c, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			c <- ws
			continue
		}
		if r.OnOrphan != nil {
			r.OnOrphan(pid, ws)
		}
	}
}

// Start starts cmd and registers it before any reap can observe its exit.
// The lock is held across fork so that a reaped orphan's pid can never be
// confused with a just-started child reusing it.
func (r *Reaper) Start(cmd *exec.Cmd) (WaitFunc, error) {
	r.mu.Lock()
	if err := cmd.Start(); err != nil {
		r.mu.Unlock()
		return nil, err
	}
	c := make(chan syscall.WaitStatus, 1)
	r.waiters[cmd.Process.Pid] = c
	r.mu.Unlock()
	var once sync.Once
	var ws syscall.WaitStatus
	return func() (syscall.WaitStatus, error) {
		once.Do(func() {
			ws = <-c
			_ = cmd.Process.Release()
		})
		return ws, nil
	}, nil
}

// WaitAll reaps until no child is left or the timeout expires, and returns
// an error naming how long it waited if children remain.
func (r *Reaper) WaitAll(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for r.Reap() {
		if time.Now().After(deadline) {
			return fmt.Errorf("children still running after %s", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}
