package instances

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"hypeman/internal/instances/state"
	"hypeman/internal/resources"
	"hypeman/internal/restart"
)

// newLedger is a ledger with 4 vCPUs × 4.0, 3 GiB of memory (ratio 1.0)
// and room for plenty of overlays.
func newLedger(t *testing.T) *resources.Ledger {
	t.Helper()
	l, err := resources.NewLedger(resources.Config{
		Settings: resources.Settings{Ratios: resources.DefaultRatios()},
		Host: resources.Host{
			resources.CPU: {Value: 4}, resources.Memory: {Value: 3 << 30}, resources.Disk: {Value: 1 << 40},
			resources.Network: {Value: 1 << 30}, resources.DiskIO: {Value: 1 << 30},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func heldMemory(l *resources.Ledger, id string) int64 {
	d, _ := l.Held(id)
	return d.Amount(resources.Memory)
}

func TestAdmissionLifecycle(t *testing.T) {
	hv := newFakeHV()
	led := newLedger(t)
	root := t.TempDir()
	m, _ := newTestManagerWith(t, root, hv, func(c *Config) { c.Admission = led })
	ctx := context.Background()
	var ids []string
	for _, n := range []string{"a", "b", "c"} {
		ids = append(ids, running(t, m, hv, CreateParams{Name: n, Size: "1GB", VCPUs: 1}).ID)
	}
	var ie *resources.InsufficientError
	_, err := m.Create(ctx, CreateParams{Name: "d-1", Image: "img", Size: "1GB", VCPUs: 1})
	if !errors.As(err, &ie) || ie.Resource != resources.Memory || ie.Asked != 1<<30 || ie.Free != 0 {
		t.Fatalf("4th create: %v", err)
	}
	if !strings.Contains(err.Error(), "oversub_memory") {
		t.Errorf("refusal does not name the setting: %v", err)
	}
	if _, err := m.Get(ctx, "d-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("refused create left an instance: %v", err)
	}
	if st, err := led.Status(ctx); err != nil || len(st.Allocations) != 3 {
		t.Errorf("refused create left a hold: %+v %v", st, err)
	}

	// A VM exit gives the running resources back; the disk stays held.
	hv.vm(m.dir(ids[0])).exit(0, "done")
	waitFor(t, m, ids[0], state.Stopped)
	if d, ok := led.Held(ids[0]); !ok || d.Running || d.Amount(resources.Disk) == 0 {
		t.Fatalf("hold after exit: %+v %v", d, ok)
	}
	d, err := m.Create(ctx, CreateParams{Name: "d-1", Image: "img", Size: "1GB", VCPUs: 1})
	if err != nil {
		t.Fatalf("create after an exit: %v", err)
	}
	// The stopped one cannot start now, and a refused start leaves it Stopped.
	if _, err := m.Start(ctx, ids[0], StartParams{}); !errors.As(err, &ie) {
		t.Fatalf("start on a full host: %v", err)
	}
	if in, _ := m.Get(ctx, ids[0]); in.State != state.Stopped {
		t.Errorf("refused start: state %s", in.State)
	}

	// Standby releases memory; restore re-admits.
	if _, err := m.Standby(ctx, ids[1], StandbyParams{}); err != nil {
		t.Fatal(err)
	}
	if heldMemory(led, ids[1]) != 0 {
		t.Error("standby kept memory")
	}
	if _, err := m.Start(ctx, ids[0], StartParams{}); err != nil {
		t.Fatalf("start after a standby freed room: %v", err)
	}
	if _, err := m.Restore(ctx, ids[1]); !errors.As(err, &ie) {
		t.Fatalf("restore on a full host: %v", err)
	}
	if in, _ := m.Get(ctx, ids[1]); in.State != state.Standby {
		t.Errorf("refused restore: state %s", in.State)
	}
	// Delete frees everything.
	if err := m.Delete(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := led.Held(d.ID); ok {
		t.Error("delete kept a hold")
	}
	if _, err := m.Restore(ctx, ids[1]); err != nil {
		t.Fatalf("restore after a delete: %v", err)
	}
	if heldMemory(led, ids[1]) != 1<<30 {
		t.Error("restored instance holds no memory")
	}

	// Fork from Running on a full host: refused, the source keeps its
	// room and runs again.
	_, err = m.Fork(ctx, ids[1], ForkParams{Name: "f", FromRunning: true})
	if !errors.As(err, &ie) {
		t.Fatalf("fork on a full host: %v", err)
	}
	if in, _ := m.Get(ctx, ids[1]); in.State != state.Running || heldMemory(led, ids[1]) != 1<<30 {
		t.Errorf("fork source after refusal: %s, holds %d", in.State, heldMemory(led, ids[1]))
	}
	// A fork to Stopped needs only disk.
	f, err := m.Fork(ctx, ids[2], ForkParams{Name: "f", FromRunning: true, TargetState: state.Stopped})
	if err != nil {
		t.Fatalf("fork to Stopped: %v", err)
	}
	if dd, ok := led.Held(f.ID); !ok || dd.Running {
		t.Errorf("stopped fork hold %+v %v", dd, ok)
	}

	// A new daemon seeds the ledger from what runs.
	m.Close()
	led2 := newLedger(t)
	m2, _ := newTestManagerWith(t, root, hv, func(c *Config) { c.Admission = led2 })
	running := 0
	for _, id := range []string{ids[0], ids[1], ids[2], f.ID} {
		in, err := m2.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if in.State != state.Stopped && in.State != state.Standby { // a VMM runs
			running++
			if heldMemory(led2, id) != 1<<30 {
				t.Errorf("%s running, seeded without memory", id)
			}
		} else if dd, ok := led2.Held(id); !ok || dd.Running {
			t.Errorf("%s %s seeded as %+v", id, in.State, dd)
		}
	}
	if running != 3 {
		t.Errorf("%d with a VMM after reload, want 3", running)
	}
}

// Parallel creates racing for the last room: exactly one wins.
func TestAdmissionRace(t *testing.T) {
	hv := newFakeHV()
	led := newLedger(t)
	m, _ := newTestManagerWith(t, t.TempDir(), hv, func(c *Config) { c.Admission = led })
	ctx := context.Background()
	if _, err := m.Create(ctx, CreateParams{Name: "big", Image: "img", Size: "2GB", VCPUs: 1}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = m.Create(ctx, CreateParams{Name: "r" + string(rune('0'+i)), Image: "img", Size: "1GB", VCPUs: 1})
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		var ie *resources.InsufficientError
		switch {
		case err == nil:
			ok++
		case !errors.As(err, &ie):
			t.Errorf("unexpected error %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d creates won the last slot, want 1", ok)
	}
}

func TestBalloonGuests(t *testing.T) {
	hv := newFakeHV()
	m, _ := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	in, err := m.Create(ctx, CreateParams{Name: "g", Image: "img", Size: "1GB", HotplugSize: "1GB"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, CreateParams{Name: "plain", Image: "img"}); err != nil {
		t.Fatal(err)
	}
	gs, err := m.BalloonGuests(ctx)
	if err != nil || len(gs) != 1 || gs[0].InstanceID != in.ID || gs[0].FloorBytes != 1<<30 || gs[0].AssignedBytes != 2<<30 {
		t.Fatalf("balloon guests %+v %v", gs, err)
	}
	if err := m.SetGuestMemoryTarget(ctx, in.ID, 2<<30); err != nil {
		t.Fatal(err)
	}
	if got, err := m.GuestMemory(ctx, in.ID); err != nil || got != 2<<30 {
		t.Fatalf("guest memory %d %v", got, err)
	}
	hv.vm(m.dir(in.ID)).exit(0, "")
	waitFor(t, m, in.ID, state.Stopped)
	if err := m.SetGuestMemoryTarget(ctx, in.ID, 1<<30); err == nil || !strings.Contains(err.Error(), "Stopped") {
		t.Errorf("stopped guest: %v", err)
	}
	if gs, _ := m.BalloonGuests(ctx); len(gs) != 0 {
		t.Errorf("stopped guest listed: %+v", gs)
	}
}

// A restart-policy restart goes through admission: on a full host it
// fails (the restart controller backs off and retries) and nothing runs.
func TestRestartRefusedOnFullHost(t *testing.T) {
	hv := newFakeHV()
	led := newLedger(t)
	m, _ := newTestManagerWith(t, t.TempDir(), hv, func(c *Config) { c.Admission = led })
	ctx := context.Background()
	a := running(t, m, hv, CreateParams{Name: "a", Size: "2GB", VCPUs: 1})
	hv.vm(m.dir(a.ID)).exit(1, "crash")
	waitFor(t, m, a.ID, state.Stopped)
	if _, err := m.Create(ctx, CreateParams{Name: "b", Image: "img", Size: "2GB", VCPUs: 1}); err != nil {
		t.Fatal(err)
	}
	err := m.StartForRestart(ctx, a.ID, func(restart.Snapshot, *restart.Status) bool { return true })
	var ie *resources.InsufficientError
	if !errors.As(err, &ie) || ie.Resource != resources.Memory {
		t.Fatalf("restart on a full host: %v", err)
	}
	if in, _ := m.Get(ctx, a.ID); in.State != state.Stopped || heldMemory(led, a.ID) != 0 {
		t.Errorf("after a refused restart: %s, holds %d", in.State, heldMemory(led, a.ID))
	}
}
