package instances

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hypeman/internal/hypervisor"
	"hypeman/internal/instances/state"
	"hypeman/internal/rotlog"
)

// rotatedFiles counts the serial log's rotated files.
func rotatedFiles(t *testing.T, path string) int {
	t.Helper()
	segs, err := rotlog.Segments(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range segs {
		if !s.Live {
			n++
		}
	}
	return n
}

// waitRotations waits until the serial log has at least n rotated files.
func waitRotations(t *testing.T, path string, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		rotated := rotatedFiles(t, path)
		if rotated >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d rotated files, want %d", rotated, n)
		}
	}
}

// The serial log rotates at the configured size while the VM prints; a
// follower started before sees every line once, a tail spans rotated
// files, markers written after rotations still count (exit code), and a
// daemon restarted while the VM is down finds the exit status across
// rotated files.
func TestSerialLogRotationKeepsLogsAndMarkers(t *testing.T) {
	root := t.TempDir()
	hv := newFakeHV()
	cfg := func(c *Config) { c.SerialLogMaxBytes, c.SerialLogFiles = 2048, 100 }
	m, _ := newTestManagerWith(t, root, hv, cfg)
	ctx := context.Background()
	in, vm := runningInstance(t, m, hv, CreateParams{Name: "chatty", Image: "img"})
	path := filepath.Join(m.dir(in.ID), hypervisor.SerialLogName)

	followed := make(chan []string, 1)
	go func() {
		var got []string
		m.StreamLogs(ctx, in.ID, LogOptions{Source: LogApp, Tail: -1, Follow: true}, func(l string) error {
			got = append(got, l)
			return nil
		})
		followed <- got
	}()
	vm.print("warm-up")
	const batches, per = 10, 300
	for b := range batches {
		for i := range per {
			vm.print(fmt.Sprintf("line %d", b*per+i))
		}
		waitRotations(t, path, b+1)
	}
	vm.exit(5, "exited with code 5")
	got := waitFor(t, m, in.ID, state.Stopped)
	if got.ExitCode == nil || *got.ExitCode != 5 {
		t.Fatalf("exit after rotations: %+v", got)
	}
	var lines []string
	select {
	case lines = <-followed:
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not end with the VM")
	}
	if len(lines) != 1+batches*per || lines[0] != "warm-up" {
		t.Fatalf("follower: %d lines, want %d", len(lines), 1+batches*per)
	}
	for i, l := range lines[1:] {
		if l != fmt.Sprintf("line %d", i) {
			t.Fatalf("follower line %d = %q", i, l)
		}
	}
	var tail []string
	m.StreamLogs(ctx, in.ID, LogOptions{Source: LogApp, Tail: 1000}, func(l string) error { tail = append(tail, l); return nil })
	if len(tail) != 1000 || tail[0] != fmt.Sprintf("line %d", batches*per-1000) || tail[999] != fmt.Sprintf("line %d", batches*per-1) {
		t.Fatalf("tail 1000 across rotated files: %d lines, %q … %q", len(tail), tail[0], tail[len(tail)-1])
	}

	// Second boot: rotate, then the daemon goes away and the VM exits.
	if _, err := m.Start(ctx, in.ID, StartParams{}); err != nil {
		t.Fatal(err)
	}
	vm = hv.vm(m.dir(in.ID))
	vm.print("HYPEMAN-PROGRAM-START")
	before := rotatedFiles(t, path)
	for i := range 400 {
		vm.print(fmt.Sprintf("boot2 %d", i))
	}
	waitRotations(t, path, before+1)
	m.Close()
	vm.exit(7, "exited with code 7")
	m2, _ := newTestManagerWith(t, root, hv, cfg)
	if got, err := m2.Get(ctx, in.ID); err != nil || got.ExitCode == nil || *got.ExitCode != 7 {
		t.Fatalf("reconciled across rotated files: %v %+v", err, got)
	}
}

// One 4 MB line without a newline made every GET /logs fail ("token too
// long"): it now comes back in 64 KiB pieces.
func TestHugeLineIsSplit(t *testing.T) {
	hv := newFakeHV()
	m, _ := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	in, vm := runningInstance(t, m, hv, CreateParams{Name: "huge", Image: "img"})
	vm.print(strings.Repeat("z", 4<<20))
	vm.print("after")
	var got []string
	if err := m.StreamLogs(ctx, in.ID, LogOptions{Source: LogApp, Tail: 3}, func(l string) error { got = append(got, l); return nil }); err != nil {
		t.Fatalf("tail: %v", err)
	}
	if len(got) != 3 || len(got[0]) != rotlog.MaxLine || len(got[1]) != rotlog.MaxLine || got[2] != "after" {
		t.Fatalf("tail 3: %d lines %v", len(got), lens(got))
	}
	got = nil
	if err := m.StreamLogs(ctx, in.ID, LogOptions{Source: LogApp, Tail: -1}, func(l string) error { got = append(got, l); return nil }); err != nil {
		t.Fatalf("all: %v", err)
	}
	if len(got) != 64+1 || strings.Join(got[:64], "") != strings.Repeat("z", 4<<20) {
		t.Fatalf("all: %d lines", len(got))
	}
}

func lens(ss []string) []int {
	out := make([]int, len(ss))
	for i, s := range ss {
		out[i] = len(s)
	}
	return out
}

// A chatty program's console rotates its start marker away; a daemon that
// re-adopts the VM afterwards still knows the program started (Running,
// not Initializing forever).
func TestReadoptionAfterMarkersRotatedAway(t *testing.T) {
	root := t.TempDir()
	hv := newFakeHV()
	cfg := func(c *Config) { c.SerialLogMaxBytes, c.SerialLogFiles = 1024, 1 }
	m, _ := newTestManagerWith(t, root, hv, cfg)
	in, vm := runningInstance(t, m, hv, CreateParams{Name: "rotated", Image: "img"})
	path := filepath.Join(m.dir(in.ID), hypervisor.SerialLogName)
	oldest := func() int64 {
		segs, _ := rotlog.Segments(path)
		if len(segs) == 0 {
			return 0
		}
		return segs[0].Start
	}
	for b := 0; oldest() == 0; b++ {
		if b == 50 {
			t.Fatal("the start of the log was not rotated away")
		}
		for i := range 200 {
			vm.print(fmt.Sprintf("chatter %d", b*200+i))
		}
		time.Sleep(serialPollInterval) // pacing: let the watcher rotate
	}
	m.Close()
	m2, _ := newTestManagerWith(t, root, hv, cfg)
	if got, err := m2.Get(context.Background(), in.ID); err != nil || got.State != state.Running {
		t.Fatalf("re-adopted: %v %+v", err, got)
	}
}
