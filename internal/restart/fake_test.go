package restart_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"hypeman/internal/events"
	"hypeman/internal/events/eventstest"
	"hypeman/internal/instances/state"
	"hypeman/internal/restart"
)

// TestMain fails the package if any test leaves a goroutine behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errNotFound = errors.New("instance not found")

// fakeInst is one instance with the manager's two locks: op serializes
// lifecycle operations (API start/stop, StartForRestart, StopForRestart),
// mu guards the data. Status reads-modify-writes hold mu, so they are
// atomic with each other; the restart checks run holding both, in the same
// critical section as the start or stop they gate — exactly the discipline
// restart.Instances documents.
type fakeInst struct {
	op sync.Mutex

	mu            sync.Mutex
	snap          restart.Snapshot
	manualStopped bool     // a user stopped it and has not started it since
	restartStarts int      // starts StartForRestart performed
	violations    []string // restart starts that happened after a manual stop
}

type fakeManager struct {
	bus   *events.Bus
	clock *eventstest.Clock

	mu    sync.Mutex
	insts map[string]*fakeInst

	startErr atomic.Pointer[error]
	// beforeStartLock runs in StartForRestart before the op lock is taken:
	// the window between the controller's decision and the start.
	beforeStartLock atomic.Pointer[func(id string)]

	snapshots     atomic.Int64 // RestartSnapshot calls
	startCalls    atomic.Int64 // StartForRestart calls
	restartStarts atomic.Int64 // starts StartForRestart performed (incl. failed launches)
	healthStops   atomic.Int64 // stops StopForRestart performed
}

func newFakeManager(bus *events.Bus, clock *eventstest.Clock) *fakeManager {
	return &fakeManager{bus: bus, clock: clock, insts: map[string]*fakeInst{}}
}

func (m *fakeManager) inst(id string) (*fakeInst, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	in, ok := m.insts[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", errNotFound, id)
	}
	return in, nil
}

func (m *fakeManager) publish(id string, from, to state.State, why string) {
	if _, err := m.bus.Publish(events.StateChange(id, from, to, why)); err != nil {
		panic(err)
	}
}

// --- restart.Instances ---

func (m *fakeManager) RestartSnapshot(ctx context.Context, id string) (restart.Snapshot, error) {
	m.snapshots.Add(1)
	in, err := m.inst(id)
	if err != nil {
		return restart.Snapshot{}, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.snap, nil
}

func (m *fakeManager) ListRestartable(ctx context.Context) ([]restart.Snapshot, error) {
	m.mu.Lock()
	ins := make([]*fakeInst, 0, len(m.insts))
	for _, in := range m.insts {
		ins = append(ins, in)
	}
	m.mu.Unlock()
	var out []restart.Snapshot
	for _, in := range ins {
		in.mu.Lock()
		if !in.snap.Policy.IsZero() {
			out = append(out, in.snap)
		}
		in.mu.Unlock()
	}
	return out, nil
}

func (m *fakeManager) UpdateRestartStatus(ctx context.Context, id string, fn func(restart.Snapshot, *restart.Status)) error {
	in, err := m.inst(id)
	if err != nil {
		return err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	st := in.snap.Status
	fn(in.snap, &st)
	in.snap.Status = st
	return nil
}

func (m *fakeManager) StartForRestart(ctx context.Context, id string, check func(restart.Snapshot, *restart.Status) bool) error {
	m.startCalls.Add(1)
	in, err := m.inst(id)
	if err != nil {
		return err
	}
	if h := m.beforeStartLock.Load(); h != nil {
		(*h)(id)
	}
	in.op.Lock()
	defer in.op.Unlock()
	in.mu.Lock()
	st := in.snap.Status
	ok := check(in.snap, &st)
	in.snap.Status = st
	if !ok {
		in.mu.Unlock()
		return nil
	}
	if in.manualStopped {
		in.violations = append(in.violations, fmt.Sprintf("%s: restart start after a manual stop (status %+v)", id, st))
	}
	in.restartStarts++
	in.mu.Unlock()
	m.restartStarts.Add(1)
	return m.bootLocked(id, in)
}

func (m *fakeManager) StopForRestart(ctx context.Context, id string, check func(restart.Snapshot, *restart.Status) bool) error {
	in, err := m.inst(id)
	if err != nil {
		return err
	}
	in.op.Lock()
	defer in.op.Unlock()
	in.mu.Lock()
	st := in.snap.Status
	ok := check(in.snap, &st)
	in.snap.Status = st
	if !ok {
		in.mu.Unlock()
		return nil
	}
	m.healthStops.Add(1)
	from := in.snap.State
	in.snap.State = state.Stopped
	in.snap.Exit = restart.ExitInfo{StoppedByHypeman: true, Code: code(143)}
	in.snap.StoppedAt = m.clock.Now()
	in.mu.Unlock()
	m.publish(id, from, state.Stopped, "health restart")
	return nil
}

// bootLocked starts a Stopped instance (caller holds in.op).
func (m *fakeManager) bootLocked(id string, in *fakeInst) error {
	now := m.clock.Now()
	in.mu.Lock()
	if in.snap.State != state.Stopped {
		s := in.snap.State
		in.mu.Unlock()
		return fmt.Errorf("cannot start instance in state %s", s)
	}
	in.snap.StartedAt, in.snap.StoppedAt, in.snap.Exit = now, time.Time{}, restart.ExitInfo{}
	if errp := m.startErr.Load(); errp != nil {
		in.snap.StoppedAt = now
		in.snap.Exit = restart.ExitInfo{LaunchFailed: true, Message: (*errp).Error()}
		in.mu.Unlock()
		return *errp
	}
	in.snap.State = state.Running
	in.mu.Unlock()
	m.publish(id, state.Stopped, state.Initializing, "start")
	m.publish(id, state.Initializing, state.Running, "program started")
	return nil
}

// --- what the manager's API paths and watcher do ---

// add creates a Stopped, never-started instance.
func (m *fakeManager) add(id string, p restart.Policy) {
	m.mu.Lock()
	m.insts[id] = &fakeInst{snap: restart.Snapshot{ID: id, State: state.Stopped, Policy: p}}
	m.mu.Unlock()
	m.publish(id, "", state.Stopped, "created")
}

// start is API start.
func (m *fakeManager) start(t testing.TB, id string) {
	t.Helper()
	in, err := m.inst(id)
	if err != nil {
		t.Fatal(err)
	}
	in.op.Lock()
	defer in.op.Unlock()
	in.mu.Lock()
	in.snap.Status.ClearForStart()
	in.manualStopped = false
	in.mu.Unlock()
	if err := m.bootLocked(id, in); err != nil {
		t.Fatalf("start %s: %v", id, err)
	}
}

// stop is API stop: it marks manual_stop first, then ends the VM if one
// runs (for a Stopped instance in backoff the mark is the whole effect).
func (m *fakeManager) stop(id string) {
	in, err := m.inst(id)
	if err != nil {
		panic(err)
	}
	in.op.Lock()
	defer in.op.Unlock()
	in.mu.Lock()
	in.snap.Status.MarkManualStop()
	in.manualStopped = true
	from := in.snap.State
	running := from == state.Running
	if running {
		in.snap.State = state.Stopped
		in.snap.Exit = restart.ExitInfo{StoppedByHypeman: true, Code: code(143)}
		in.snap.StoppedAt = m.clock.Now()
	}
	in.mu.Unlock()
	if running {
		m.publish(id, from, state.Stopped, "stop requested")
	}
}

// exit is the guest program exiting by itself (the watcher's path).
func (m *fakeManager) exit(t testing.TB, id string, exit restart.ExitInfo) {
	t.Helper()
	in, err := m.inst(id)
	if err != nil {
		t.Fatal(err)
	}
	in.mu.Lock()
	if in.snap.State != state.Running {
		in.mu.Unlock()
		t.Fatalf("exit of %s in state %s", id, in.snap.State)
	}
	in.snap.State = state.Stopped
	in.snap.Exit = exit
	in.snap.StoppedAt = m.clock.Now()
	in.mu.Unlock()
	m.publish(id, state.Running, state.Stopped, "program exited")
}

// setPolicy is PATCH restart_policy.
func (m *fakeManager) setPolicy(id string, p restart.Policy) {
	in, err := m.inst(id)
	if err != nil {
		panic(err)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	in.snap.Status = in.snap.Status.ForPolicyChange(in.snap.Policy, p)
	in.snap.Policy = p
}

func (m *fakeManager) remove(id string) {
	m.mu.Lock()
	in := m.insts[id]
	delete(m.insts, id)
	m.mu.Unlock()
	m.bus.Publish(events.Deleted(id, in.snap.State, "deleted"))
}

func (m *fakeManager) get(id string) restart.Snapshot {
	in, err := m.inst(id)
	if err != nil {
		panic(err)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.snap
}

func (m *fakeManager) setStatus(id string, st restart.Status) {
	in, _ := m.inst(id)
	in.mu.Lock()
	defer in.mu.Unlock()
	in.snap.Status = st
}

func (m *fakeManager) violations() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, in := range m.insts {
		in.mu.Lock()
		out = append(out, in.violations...)
		in.mu.Unlock()
	}
	return out
}

// fakeMetrics records what the controller reports.
type fakeMetrics struct {
	mu       sync.Mutex
	attempts map[string]int // reason/ok
	blocked  map[restart.BlockedReason]int
	backoffs []time.Duration
}

func (f *fakeMetrics) RestartAttempted(r restart.Reason, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.attempts == nil {
		f.attempts = map[string]int{}
	}
	f.attempts[fmt.Sprintf("%s/%v", r, ok)]++
}

func (f *fakeMetrics) RestartBlocked(r restart.BlockedReason) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.blocked == nil {
		f.blocked = map[restart.BlockedReason]int{}
	}
	f.blocked[r]++
}

func (f *fakeMetrics) BackoffObserved(r restart.Reason, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.backoffs = append(f.backoffs, d)
}

func (f *fakeMetrics) attempted(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts[key]
}

func (f *fakeMetrics) blockedN(r restart.BlockedReason) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.blocked[r]
}

// harness runs a controller against a fake manager with a fake clock.
type harness struct {
	clock   *eventstest.Clock
	bus     *events.Bus
	m       *fakeManager
	metrics *fakeMetrics
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	clock := eventstest.NewClock(t0)
	bus := events.New(events.Options{Clock: clock})
	t.Cleanup(bus.Close)
	return &harness{clock: clock, bus: bus, m: newFakeManager(bus, clock), metrics: &fakeMetrics{}}
}

// run starts a controller (rnd is its jitter draw) and stops it at cleanup
// (or when the returned stop is called).
func (h *harness) run(t *testing.T, rnd float64) (*restart.Controller, func()) {
	t.Helper()
	c, err := restart.New(restart.Config{
		Instances: h.m, Events: h.bus, Clock: h.clock, Metrics: h.metrics,
		Rand: func() float64 { return rnd },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("controller did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return c, stop
}

// eventually polls cond in real time (the controller works in goroutines).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// settle gives the controller a moment to do something it must not do.
func settle() { time.Sleep(30 * time.Millisecond) }
