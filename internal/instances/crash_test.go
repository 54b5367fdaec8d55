package instances

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/fsutil"
	"hypeman/internal/hypervisor"
	"hypeman/internal/instances/state"
	"hypeman/internal/restart"
)

// stepper is a StepHook that stops an operation at one step. Unreleased, it
// stands for kill -9 of the daemon there: the goroutine blocks for good, so
// nothing after the step runs (not even deferred cleanup), and the test
// "restarts the daemon" by closing the manager and loading a new one on the
// same data dir and fake hypervisor.
type stepper struct {
	mu      sync.Mutex
	at      string
	release chan struct{} // nil: never released
	reached chan string
}

func newStepper() *stepper { return &stepper{reached: make(chan string, 1)} }

func (s *stepper) arm(step string, release chan struct{}) {
	s.mu.Lock()
	s.at, s.release = step, release
	s.mu.Unlock()
}

func (s *stepper) hook(step string) {
	s.mu.Lock()
	hit, rel := step == s.at, s.release
	if hit {
		s.at = ""
	}
	s.mu.Unlock()
	if !hit {
		return
	}
	s.reached <- step
	if rel == nil {
		select {}
	}
	<-rel
}

func (s *stepper) wait(t *testing.T, step string) {
	t.Helper()
	select {
	case <-s.reached:
	case <-time.After(10 * time.Second):
		t.Fatalf("step %s never reached", step)
	}
}

// runningInstance creates an instance and brings it to Running.
func runningInstance(t *testing.T, m *Manager, hv *fakeHV, p CreateParams) (*Instance, *fakeVM) {
	t.Helper()
	in, err := m.Create(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	vm := hv.vm(m.dir(in.ID))
	vm.print("HYPEMAN-PROGRAM-START")
	waitFor(t, m, in.ID, state.Running)
	return in, vm
}

// Between the VMM's exit and the watcher recording it, readers never see
// Stopped without the exit code, nor Unknown; and a VMM that hung up its
// control channel on its way out is not Unknown either.
func TestExitIsNeverVisibleBeforeItIsRecorded(t *testing.T) {
	hv := newFakeHV()
	st := newStepper()
	m, _ := newTestManagerWith(t, t.TempDir(), hv, func(c *Config) { c.StepHook = st.hook })
	bg := context.Background()
	in, vm := runningInstance(t, m, hv, CreateParams{Name: "exits", Image: "img"})

	release := make(chan struct{})
	st.arm("vm:exited", release)
	vm.exit(3, "exited with code 3")
	st.wait(t, "vm:exited") // the process is gone; the watcher is held before recording it
	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	got, err := m.Get(ctx, in.ID)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if got.State == state.Unknown || (got.State == state.Stopped && got.ExitCode == nil) {
		t.Fatalf("while the exit is being recorded: state %s, exit code %v, error %v", got.State, got.ExitCode, deref(got.StateError))
	}
	done := make(chan *Instance, 1)
	go func() {
		got, _ := m.Get(bg, in.ID) // waits for the record
		done <- got
	}()
	close(release)
	select {
	case got = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Get did not return after the exit was recorded")
	}
	if got == nil || got.State != state.Stopped || got.ExitCode == nil || *got.ExitCode != 3 {
		t.Fatalf("after the record: %+v", got)
	}

	// The control channel closes before the process is reaped.
	in2, vm2 := runningInstance(t, m, hv, CreateParams{Name: "exiting", Image: "img"})
	vm2.startExiting()
	ctx, cancel = context.WithTimeout(bg, 100*time.Millisecond)
	got, err = m.Get(ctx, in2.ID)
	cancel()
	if err != nil || got.State == state.Unknown || got.State == state.Stopped {
		t.Fatalf("vmm exiting: %v state %s (%s)", err, got.State, deref(got.StateError))
	}
	vm2.exit(3, "exited with code 3")
	if got := waitFor(t, m, in2.ID, state.Stopped); got.ExitCode == nil || *got.ExitCode != 3 {
		t.Fatalf("after exit: %+v", got)
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// A daemon killed at any step of a delete finishes the delete when it
// starts: the instance never comes back (it used to be reconciled as a
// crashed VM and restarted by its policy).
func TestInterruptedDeleteIsFinishedAtStart(t *testing.T) {
	for _, step := range []string{"delete:intent", "delete:killed", "delete:renamed"} {
		t.Run(step, func(t *testing.T) {
			root := t.TempDir()
			hv := newFakeHV()
			st := newStepper()
			m, _ := newTestManagerWith(t, root, hv, func(c *Config) { c.StepHook = st.hook })
			in, vm := runningInstance(t, m, hv, CreateParams{Name: "doomed", Image: "img", RestartPolicy: ptr(restart.DefaultPolicy(restart.Always))})
			st.arm(step, nil)
			go m.Delete(context.Background(), in.ID)
			st.wait(t, step)
			m.Close() // kill -9

			m2, _ := newTestManager(t, root, hv)
			if _, err := m2.Get(context.Background(), in.ID); !errors.Is(err, ErrNotFound) {
				t.Fatalf("instance after restart: %v", err)
			}
			if !vm.exited() {
				t.Fatal("vmm still running")
			}
			if ents, _ := os.ReadDir(filepath.Join(root, "instances")); len(ents) != 0 {
				t.Fatalf("left in the instances dir: %v", ents)
			}
		})
	}
}

// A daemon killed at any step of a fork from Running leaves, after its
// restart, the source Running again and the fork either complete (Running)
// or gone without a trace (it used to leave the source in Standby).
func TestInterruptedForkFromRunningRestoresSource(t *testing.T) {
	steps := []struct {
		step      string
		forkKept  bool
		srcVMSame bool // the source's VM never stopped
	}{
		{"standby:paused", false, true},
		{"standby:saved", false, true},
		{"standby:committed", false, false},
		{"fork:copied", false, false},
		{"fork:created", false, false},
		{"fork:started", false, false},
		{"fork:done", true, false},
		{"restore:loaded", true, false},
		{"restore:committed", true, false},
	}
	for _, c := range steps {
		t.Run(c.step, func(t *testing.T) {
			root := t.TempDir()
			hv := newFakeHV()
			st := newStepper()
			m, _ := newTestManagerWith(t, root, hv, func(cfg *Config) { cfg.StepHook = st.hook })
			src, vm := runningInstance(t, m, hv, CreateParams{Name: "src", Image: "img"})
			st.arm(c.step, nil)
			go m.Fork(context.Background(), "src", ForkParams{Name: "child", FromRunning: true})
			st.wait(t, c.step)
			m.Close() // kill -9

			m2, _ := newTestManager(t, root, hv)
			ctx := context.Background()
			got, err := m2.Get(ctx, src.ID)
			if err != nil || got.State != state.Running {
				t.Fatalf("source after restart: %v %+v", err, got)
			}
			if now := hv.vm(m2.dir(src.ID)); (now == vm) != c.srcVMSame || now.exited() {
				t.Fatalf("source vm: same=%v exited=%v", now == vm, now.exited())
			}
			if _, err := os.Stat(filepath.Join(m2.dir(src.ID), standbyDir)); !os.IsNotExist(err) {
				t.Errorf("source standby snapshot left behind: %v", err)
			}
			list, _ := m2.List(ctx, ListOptions{})
			ents, _ := os.ReadDir(filepath.Join(root, "instances"))
			if !c.forkKept {
				if len(list) != 1 || len(ents) != 1 {
					t.Fatalf("half fork left: %d instances, dirs %v", len(list), ents)
				}
				return
			}
			child, err := m2.Get(ctx, "child")
			if err != nil || child.State != state.Running || len(list) != 2 || len(ents) != 2 {
				t.Fatalf("completed fork: %v %+v; %d instances, dirs %v", err, child, len(list), ents)
			}
		})
	}
}

// At start, crash leftovers are removed (a dir without metadata, temp files
// of atomic writes, a half-written standby snapshot, half-copied restore
// disks, a consumed standby snapshot); an instance whose metadata has an
// unknown format version is reported Unknown naming the file and version,
// never written over, and can be deleted, while the others load.
func TestStartupCleansLeftoversAndReportsUnreadableMetadata(t *testing.T) {
	root := t.TempDir()
	hv := newFakeHV()
	m, _ := newTestManager(t, root, hv)
	ctx := context.Background()
	good, gvm := runningInstance(t, m, hv, CreateParams{Name: "good", Image: "img"})
	gvm.exit(0, "exited")
	waitFor(t, m, good.ID, state.Stopped)
	future, fvm := runningInstance(t, m, hv, CreateParams{Name: "future", Image: "img"})
	fvm.exit(0, "exited")
	waitFor(t, m, future.ID, state.Stopped)
	m.Close()

	var v struct{ Version int }
	if err := fsutil.ReadJSON(filepath.Join(m.dir(good.ID), metadataFile), &v); err != nil || v.Version != 1 {
		t.Fatalf("metadata.json version %d (%v), want 1 (no volumes)", v.Version, err)
	}
	futurePath := filepath.Join(m.dir(future.ID), metadataFile)
	futureBody := []byte(`{"version": 99, "id": "` + future.ID + `", "name": "future", "shape": {"new": true}}`)
	if err := os.WriteFile(futurePath, futureBody, 0o644); err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(root, "instances", "orphanid")
	leftovers := []string{
		orphan,
		filepath.Join(m.dir(good.ID), "standby.tmp-123"),
		filepath.Join(m.dir(good.ID), ".metadata.json.tmp-456"),
		filepath.Join(m.dir(good.ID), ".overlay.ext4.restore"),
		filepath.Join(m.dir(good.ID), standbyDir),
	}
	for _, p := range leftovers {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(p, "data"), []byte("x"), 0o644)
	}

	m2, _ := newTestManager(t, root, hv)
	for _, p := range leftovers {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived startup", p)
		}
	}
	if got, err := m2.Get(ctx, good.ID); err != nil || got.State != state.Stopped {
		t.Fatalf("good instance: %v %+v", err, got)
	}
	got, err := m2.Get(ctx, future.ID)
	if err != nil || got.State != state.Unknown || got.StateError == nil ||
		!strings.Contains(*got.StateError, futurePath) || !strings.Contains(*got.StateError, "version 99") {
		t.Fatalf("unreadable instance: %v %+v (%s)", err, got, deref(got.StateError))
	}
	if list, _ := m2.List(ctx, ListOptions{}); len(list) != 2 {
		t.Fatalf("list: %d instances", len(list))
	}
	var te *TransitionError
	if _, err := m2.Start(ctx, future.ID, StartParams{}); !errors.As(err, &te) {
		t.Errorf("start: %v", err)
	}
	if _, err := m2.Stop(ctx, future.ID, StopParams{}); !errors.As(err, &te) || len(te.Allowed) != 1 || te.Allowed[0] != ActionDelete {
		t.Errorf("stop: %v", err)
	}
	if _, err := m2.Update(ctx, future.ID, UpdateParams{RestartPolicy: ptr(restart.DefaultPolicy(restart.Always))}); !errors.As(err, &te) {
		t.Errorf("update: %v", err)
	}
	if b, _ := os.ReadFile(futurePath); !bytes.Equal(b, futureBody) {
		t.Fatalf("unreadable metadata was rewritten: %s", b)
	}
	if err := m2.Delete(ctx, future.ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := os.Stat(m2.dir(future.ID)); !os.IsNotExist(err) {
		t.Fatalf("deleted instance dir: %v", err)
	}
}

// A guest stopped by a failed disk write shows Paused with the disk and the
// reason in state_error (and in the hypeman log); Resume continues it.
func TestIOErrorPauseSaysWhyAndResumes(t *testing.T) {
	hv := newFakeHV()
	m, bus := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	in, vm := runningInstance(t, m, hv, CreateParams{Name: "full", Image: "img"})
	sub := bus.Subscribe(events.SubscribeOptions{})
	defer sub.Close()
	vm.ioError(hypervisor.DiskError{File: overlayFile, NoSpace: true, Reason: "no space left on device"})
	want := "guest I/O error on disk overlay: no space left on device; free space on the host filesystem and resume"
	for paused := false; !paused; { // the watcher publishes the pause with its reason
		select {
		case ev := <-sub.C():
			if paused = ev.To == state.Paused; paused && (ev.Reason != want || ev.From != state.Running) {
				t.Fatalf("event %+v", ev)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no Paused event")
		}
	}
	got := waitFor(t, m, in.ID, state.Paused)
	if got.StateError == nil || *got.StateError != want {
		t.Fatalf("state_error %q, want %q", deref(got.StateError), want)
	}
	var log []string
	m.StreamLogs(ctx, in.ID, LogOptions{Source: LogHypeman, Tail: -1}, func(l string) error { log = append(log, l); return nil })
	if !strings.Contains(strings.Join(log, "\n"), want) {
		t.Fatalf("hypeman log: %q", log)
	}
	res, err := m.Resume(ctx, in.ID)
	if err != nil || res.State != state.Running || res.StateError != nil {
		t.Fatalf("resume: %v %+v", err, res)
	}
}

// snapshot.json carries a format version; an unknown one is refused naming
// the file, a file without one reads as version 1.
func TestSnapshotRecordVersion(t *testing.T) {
	hv := newFakeHV()
	m, _ := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	in, vm := runningInstance(t, m, hv, CreateParams{Name: "snapsrc", Image: "img"})
	vm.exit(0, "exited")
	waitFor(t, m, in.ID, state.Stopped)
	snap, err := m.CreateSnapshot(ctx, in.ID, SnapshotParams{Name: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(m.cfg.Paths.SnapshotDir(snap.ID), snapshotFile)
	var raw map[string]any
	if err := fsutil.ReadJSON(path, &raw); err != nil || raw["version"] != float64(1) {
		t.Fatalf("snapshot.json version %v (%v)", raw["version"], err)
	}
	raw["version"] = 5
	fsutil.WriteJSONAtomic(path, raw, 0o644)
	var ve *fsutil.VersionError
	if _, err := m.GetSnapshot(ctx, snap.ID); !errors.As(err, &ve) || ve.Path != path || ve.Version != 5 {
		t.Fatalf("unknown version: %v", err)
	}
	if list, _ := m.ListSnapshots(ctx, SnapshotFilter{}); len(list) != 0 {
		t.Fatalf("unreadable snapshot listed: %+v", list)
	}
	delete(raw, "version")
	fsutil.WriteJSONAtomic(path, raw, 0o644)
	if got, err := m.GetSnapshot(ctx, "s1"); err != nil || got.ID != snap.ID {
		t.Fatalf("unversioned snapshot.json: %v %+v", err, got)
	}
}
