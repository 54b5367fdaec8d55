package guestinit

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeMeminfo(t *testing.T, path string, totalKB int64) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(fmt.Sprintf("MemTotal:       %d kB\nMemFree:         1000 kB\n", totalKB)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// The program start waits while the balloon inflates (MemTotal falls) and
// goes on once MemTotal is at most the target; a balloon that never gets
// there is reported after the timeout.
func TestWaitForMemTotal(t *testing.T) {
	p := filepath.Join(t.TempDir(), "meminfo")
	writeMeminfo(t, p, 4<<20) // 4 GiB
	go func() {
		// Shrink in steps as the driver does; the waiter must not return
		// before the last one, the only one at or below the target.
		for _, kb := range []int64{3 << 20, 2 << 20, 900 << 10} {
			time.Sleep(5 * time.Millisecond)
			if err := os.WriteFile(p+".tmp", []byte(fmt.Sprintf("MemTotal: %d kB\n", kb)), 0o644); err != nil || os.Rename(p+".tmp", p) != nil {
				t.Error("rewrite meminfo", err)
			}
		}
	}()
	got, err := waitForMemTotal(context.Background(), p, 1<<30, time.Minute, time.Millisecond)
	if err != nil || got != 900<<20 {
		t.Fatalf("got %d, %v", got, err)
	}

	writeMeminfo(t, p, 4<<20)
	if _, err := waitForMemTotal(context.Background(), p, 1<<30, 20*time.Millisecond, time.Millisecond); err == nil || !strings.Contains(err.Error(), "4096 MiB") {
		t.Fatalf("stuck balloon: %v", err)
	}
	os.WriteFile(p, []byte("MemFree: 1 kB\n"), 0o644)
	if _, err := waitForMemTotal(context.Background(), p, 1<<30, time.Second, time.Millisecond); err == nil {
		t.Fatal("meminfo without MemTotal must be an error")
	}
}
