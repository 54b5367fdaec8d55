package qemu

import (
	"context"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"hypeman/internal/hypervisor"
	"hypeman/internal/rotlog"
)

// A guest printing as fast as it can while its serial log is rotated (QMP
// chardev-change) again and again: every counter line is in exactly one
// file, in order, none lost or doubled, lines cut by a rotation rejoined.
func TestSerialLogRotationLosesNothing(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	dir := t.TempDir()
	initrd := counterInitrd(t, t.TempDir())
	killOnCleanup(t, dir)
	ctx := context.Background()
	vm, err := d.Launch(ctx, counterVMConfig(t, dir, initrd, 128, "hmchatty=1"))
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	waitCounter(t, dir, 10, 90*time.Second)

	path := filepath.Join(dir, hypervisor.SerialLogName)
	var reopens []time.Duration
	start := time.Now()
	startEnd, _ := rotlog.End(path)
	for deadline := time.Now().Add(90 * time.Second); len(reopens) < 20; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d rotations", len(reopens))
		}
		_, err := rotlog.Rotate(path, 32<<10, 1000, func() error {
			t0 := time.Now()
			err := vm.ReopenSerialLog(ctx)
			reopens = append(reopens, time.Since(t0))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	if err := vm.Kill(); err != nil {
		t.Fatal(err)
	}
	end, _ := rotlog.End(path)

	r := rotlog.NewReader(path, 0)
	defer r.Close()
	var counts []int
	collect := func(l []byte) {
		if m := counterRE.FindSubmatch(l); m != nil {
			n, _ := strconv.Atoi(string(m[1]))
			counts = append(counts, n)
		}
	}
	if err := r.Poll(collect); err != nil {
		t.Fatal(err)
	}
	r.Flush(collect)
	for i, n := range counts {
		if n != i {
			t.Fatalf("counter line %d is %d (lost or doubled at a rotation?)", i, n)
		}
	}
	segs, _ := rotlog.Segments(path)
	slices.Sort(reopens)
	t.Logf("%d rotations of a %.0f KB/s guest in %s, %d counter lines intact in %d files; chardev-change p50 %s max %s",
		len(reopens), float64(end-startEnd)/1024/elapsed.Seconds(), elapsed.Round(time.Millisecond), len(counts), len(segs),
		reopens[len(reopens)/2].Round(time.Microsecond), reopens[len(reopens)-1].Round(time.Microsecond))
}
