package guestinit

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"time"
)

// memoryWaitTimeout bounds how long the program's start waits for the
// memory balloon (measured under TCG on a loaded 2-core host: 3 GiB
// inflate in 2-9 s).
const memoryWaitTimeout = 30 * time.Second

// memTotal reads MemTotal from a /proc/meminfo file, in bytes.
func memTotal(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) >= 2 && string(f[0]) == "MemTotal:" {
			kb, err := strconv.ParseInt(string(f[1]), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: MemTotal %q: %w", path, f[1], err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("%s: no MemTotal", path)
}

// waitForMemTotal polls meminfo until MemTotal is at most target bytes:
// the balloon holding hotplug memory back (guestconfig.Config.MemoryTarget)
// inflates in the background from early boot, and the program must start
// with the memory it was given, not the VM's whole RAM (runtimes size heaps
// and caches from MemTotal at start). It returns the last MemTotal, and an
// error when timeout passes first (the caller starts the program anyway).
func waitForMemTotal(ctx context.Context, meminfo string, target int64, timeout, poll time.Duration) (int64, error) {
	deadline := time.Now().Add(timeout)
	for {
		total, err := memTotal(meminfo)
		if err != nil {
			return 0, err
		}
		if total <= target {
			return total, nil
		}
		if time.Now().After(deadline) {
			return total, fmt.Errorf("MemTotal still %d MiB after %v, want at most %d MiB", total>>20, timeout, target>>20)
		}
		select {
		case <-ctx.Done():
			return total, ctx.Err()
		case <-time.After(poll):
		}
	}
}
