package qemu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"hypeman/internal/fsutil"
	"hypeman/internal/procfs"
)

// PidFile is the content of <dir>/qemu.pid. The start time (field 22 of
// /proc/<pid>/stat, clock ticks since host boot) pins the pid to one process:
// after a reboot or pid wrap-around a different process may own the pid, and
// it must never be mistaken for (or killed as) our VMM.
type PidFile struct {
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
}

func writePidFile(path string, p PidFile) error {
	return fsutil.WriteJSONAtomic(path, p, 0o644)
}

func readPidFile(path string) (PidFile, error) {
	var p PidFile
	if err := fsutil.ReadJSON(path, &p); err != nil {
		return p, err
	}
	if p.Pid <= 0 {
		return p, fmt.Errorf("read %s: invalid pid %d", path, p.Pid)
	}
	return p, nil
}

// isQEMUCmdline reports whether a NUL-separated /proc/<pid>/cmdline belongs
// to a qemu-system binary.
func isQEMUCmdline(cmdline []byte) bool {
	argv0, _, _ := strings.Cut(string(cmdline), "\x00")
	return strings.HasPrefix(filepath.Base(argv0), "qemu-system-")
}

// errStale says a pid file names a process that is gone or not ours.
var errStale = errors.New("stale pid file")

// checkProcess verifies that pf still names our live QEMU: the process
// exists, is not a zombie, has the recorded start time and runs qemu-system.
func checkProcess(pf PidFile) error {
	st, err := procfs.ReadStat(pf.Pid)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: pid %d does not exist", errStale, pf.Pid)
		}
		return fmt.Errorf("pid %d: %w", pf.Pid, err)
	}
	if st.StartTime != pf.StartTime {
		return fmt.Errorf("%w: pid %d was reused (start time %d, recorded %d)", errStale, pf.Pid, st.StartTime, pf.StartTime)
	}
	if st.State == 'Z' || st.State == 'X' {
		return fmt.Errorf("%w: pid %d has exited", errStale, pf.Pid)
	}
	cl, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pf.Pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: pid %d exited", errStale, pf.Pid)
		}
		return fmt.Errorf("pid %d: %w", pf.Pid, err)
	}
	if !isQEMUCmdline(cl) {
		return fmt.Errorf("%w: pid %d is not qemu (%q)", errStale, pf.Pid, strings.ReplaceAll(string(cl), "\x00", " "))
	}
	return nil
}

// watchExit closes the returned channel when the (non-child) process pf
// exits. It uses a pidfd registered with Go's netpoller, so waiting costs no
// thread and stop() releases it; where pidfd_open is unavailable it polls.
// stop must be called to release resources; it does not close the channel.
func watchExit(pf PidFile, pollEvery time.Duration) (done <-chan struct{}, stop func(), err error) {
	fd, err := unix.PidfdOpen(pf.Pid, unix.PIDFD_NONBLOCK)
	if err == nil {
		// Re-check identity after opening: the pidfd pins the process, so
		// if it is still ours now, the pidfd watches the right one.
		if cerr := checkProcess(pf); cerr != nil {
			unix.Close(fd)
			return nil, nil, cerr
		}
		return watchPidfd(fd, pf.Pid)
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EPERM) {
		if errors.Is(err, unix.ESRCH) {
			return nil, nil, fmt.Errorf("%w: pid %d does not exist", errStale, pf.Pid)
		}
		return nil, nil, fmt.Errorf("pidfd_open %d: %w", pf.Pid, err)
	}
	// Fallback: poll /proc.
	ch := make(chan struct{})
	quit := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(pollEvery)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				if err := checkProcess(pf); errors.Is(err, errStale) {
					close(ch)
					return
				}
			}
		}
	}()
	return ch, func() { close(quit); <-finished }, nil
}

// watchPidfd takes ownership of a non-blocking pidfd and closes the returned
// channel when the process exits. The wait parks in Go's netpoller (the
// pidfd turns readable on exit); stop closes the pidfd, which ends the wait.
func watchPidfd(fd int, pid int) (<-chan struct{}, func(), error) {
	f := os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("pidfd: %w", err)
	}
	ch := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		exited := false
		rerr := rc.Read(func(fd uintptr) bool {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, perr := unix.Poll(pfd, 0)
			exited = perr == nil && n > 0 && pfd[0].Revents != 0
			return exited
		})
		if rerr == nil && exited {
			close(ch)
		}
	}()
	return ch, func() { f.Close(); <-finished }, nil
}
