package guestinit

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"syscall"

	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/guest/guestproc"
)

// ExitCodeInitFailure is the exit code reported when the init itself fails
// (missing disk, bad config, mount failure) and the program never ran. It is
// Docker's code for "the runtime failed to run the container", which keeps it
// apart from 126/127 (the program could not be executed) and from 255, a code
// programs commonly exit with themselves.
const ExitCodeInitFailure = 125

// ExitFromStatus describes how the program ended. oomKills is how many OOM
// kills the kernel counted while the program ran.
func ExitFromStatus(ws syscall.WaitStatus, oomKills int64) guestconfig.Exit {
	code, msg, ok := guestproc.DescribeStatus(ws)
	if !ok {
		return guestconfig.Exit{Code: ExitCodeInitFailure, Message: "init: " + msg}
	}
	if oomKills > 0 {
		if ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			msg = "out of memory: " + msg
		} else {
			msg += fmt.Sprintf(" (out of memory: the kernel killed %d process(es))", oomKills)
		}
	}
	return guestconfig.Exit{Code: code, Message: msg}
}

// ParseOOMKills returns the oom_kill counter from /proc/vmstat content.
func ParseOOMKills(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == "oom_kill" {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no oom_kill counter in vmstat")
}
