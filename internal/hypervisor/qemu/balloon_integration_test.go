package qemu

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"hypeman/internal/hypervisor"
)

// waitActual polls MemoryActual until it equals want.
func waitActual(t *testing.T, b hypervisor.MemoryBalloon, want int64) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := b.MemoryActual(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("balloon: guest memory %d MiB, want %d MiB", got>>20, want>>20)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A VM launched with BalloonMiB starts with that much held back (the guest
// driver inflates to the target Launch set), follows SetMemoryTarget both
// ways, and keeps the balloon across save/restore; a VM without one says
// so with ErrNoBalloon.
func TestBalloonTargetAndRestore(t *testing.T) {
	d := newTestDriver(t)
	base := t.TempDir()
	dir := mkdir(t, filepath.Join(base, "vm"))
	killOnCleanup(t, dir)
	initrd := counterInitrd(t, base, "virtio_mmio", "virtio_balloon")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	cfg := counterVMConfig(t, dir, initrd, 512, "")
	cfg.BalloonMiB = 256
	v, err := d.Launch(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { v.Kill(); v.Close() }()
	b := v.(hypervisor.MemoryBalloon)
	waitActual(t, b, 256<<20)
	if err := b.SetMemoryTarget(ctx, 512<<20); err != nil {
		t.Fatal(err)
	}
	waitActual(t, b, 512<<20)
	if err := b.SetMemoryTarget(ctx, 384<<20); err != nil {
		t.Fatal(err)
	}
	waitActual(t, b, 384<<20)
	waitCounter(t, dir, 3, 90*time.Second)

	snap := filepath.Join(base, "snap")
	if _, err := v.SaveState(ctx, snap, hypervisor.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	v.Kill()
	v.Close()
	r, err := d.Restore(ctx, hypervisor.RestoreConfig{Dir: dir, SnapshotDir: snap})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { r.Kill(); r.Close() }()
	if err := r.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	rb := r.(hypervisor.MemoryBalloon)
	waitActual(t, rb, 384<<20) // the target travels in the device state
	if err := rb.SetMemoryTarget(ctx, 256<<20); err != nil {
		t.Fatal(err)
	}
	waitActual(t, rb, 256<<20)
	r.Kill()

	// No balloon device: a typed error, not a hang.
	plainDir := mkdir(t, filepath.Join(base, "plain"))
	killOnCleanup(t, plainDir)
	p, err := d.Launch(ctx, counterVMConfig(t, plainDir, initrd, 256, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { p.Kill(); p.Close() }()
	if err := p.(hypervisor.MemoryBalloon).SetMemoryTarget(ctx, 128<<20); !errors.Is(err, hypervisor.ErrNoBalloon) {
		t.Fatalf("no balloon: %v", err)
	}
	if _, err := p.(hypervisor.MemoryBalloon).MemoryActual(ctx); !errors.Is(err, hypervisor.ErrNoBalloon) {
		t.Fatalf("no balloon: %v", err)
	}
}
