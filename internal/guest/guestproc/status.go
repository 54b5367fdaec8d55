package guestproc

import (
	"fmt"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// DescribeStatus returns the shell-style exit code of a wait status (128+N
// for a signal) and a human message: "exited with code N" or "killed by
// signal N (SIGNAME)". ok is false for a status that is neither (stopped or
// continued), which a waiter never sees.
func DescribeStatus(ws syscall.WaitStatus) (code int, msg string, ok bool) {
	switch {
	case ws.Exited():
		return ws.ExitStatus(), fmt.Sprintf("exited with code %d", ws.ExitStatus()), true
	case ws.Signaled():
		sig := ws.Signal()
		return 128 + int(sig), fmt.Sprintf("killed by signal %d (%s)", int(sig), SignalName(sig)), true
	}
	return 0, fmt.Sprintf("unexpected wait status %#x", uint32(ws)), false
}

// SignalName returns "SIGKILL" style names.
func SignalName(sig syscall.Signal) string {
	if n := unix.SignalName(sig); n != "" {
		return n
	}
	return "signal " + strconv.Itoa(int(sig))
}
