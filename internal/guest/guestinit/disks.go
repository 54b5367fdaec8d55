package guestinit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ErrDiskNotFound is returned (wrapped) when a disk serial never appears.
var ErrDiskNotFound = errors.New("disk not found")

// ScanDisks maps virtio-blk serials to block device names (e.g. "vda") by
// reading <sysBlock>/<dev>/serial.
func ScanDisks(sysBlock string) (map[string]string, error) {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("scan disks: %w", err)
	}
	out := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(sysBlock, e.Name(), "serial"))
		if err != nil {
			continue // not virtio-blk, or not ready yet
		}
		serial := strings.TrimRight(strings.TrimSpace(string(b)), "\x00")
		if serial != "" {
			out[serial] = e.Name()
		}
	}
	return out, nil
}

// WaitForDisks polls sysBlock until every serial in want has a device or the
// timeout expires. Devices probe asynchronously after the virtio modules
// load, so polling (every 10 ms) is the simplest robust wait.
func WaitForDisks(ctx context.Context, sysBlock string, want []string, timeout time.Duration) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		found, err := ScanDisks(sysBlock)
		if err != nil {
			return nil, err
		}
		var missing []string
		for _, s := range want {
			if _, ok := found[s]; !ok {
				missing = append(missing, s)
			}
		}
		if len(missing) == 0 {
			return found, nil
		}
		select {
		case <-ctx.Done():
			var have []string
			for s, d := range found {
				have = append(have, fmt.Sprintf("%s=%s", d, s))
			}
			slices.Sort(have)
			return nil, fmt.Errorf("%w after %s: serial %s (present: %s)", ErrDiskNotFound, timeout,
				strings.Join(missing, ", "), orNone(strings.Join(have, ", ")))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
