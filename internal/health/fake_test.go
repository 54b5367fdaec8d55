package health_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"hypeman/internal/events"
	"hypeman/internal/events/eventstest"
	"hypeman/internal/health"
	"hypeman/internal/instances/state"
	"hypeman/internal/restart"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errNotFound = errors.New("instance not found")

// fakeInst has the manager's lock discipline: op serializes lifecycle
// operations, mu guards the data (status updates hold mu).
type fakeInst struct {
	op sync.Mutex

	mu        sync.Mutex
	state     state.State
	check     health.Check
	hst       health.Status
	startedAt time.Time
	stoppedAt time.Time
	policy    restart.Policy
	rst       restart.Status
	exit      restart.ExitInfo
}

// fakeManager implements health.Instances and restart.Instances.
type fakeManager struct {
	bus   *events.Bus
	clock *eventstest.Clock
	mu    sync.Mutex
	insts map[string]*fakeInst
}

func (m *fakeManager) inst(id string) (*fakeInst, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	in := m.insts[id]
	if in == nil {
		return nil, fmt.Errorf("%w: %s", errNotFound, id)
	}
	return in, nil
}

func (m *fakeManager) all() map[string]*fakeInst {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]*fakeInst, len(m.insts))
	for id, in := range m.insts {
		out[id] = in
	}
	return out
}

func (in *fakeInst) target(id string) health.Target {
	return health.Target{ID: id, State: in.state, Check: in.check, StartedAt: in.startedAt, Status: in.hst}
}

func (in *fakeInst) snapshot(id string) restart.Snapshot {
	return restart.Snapshot{ID: id, State: in.state, Policy: in.policy, Status: in.rst, Exit: in.exit,
		StartedAt: in.startedAt, StoppedAt: in.stoppedAt}
}

// --- health.Instances ---

func (m *fakeManager) HealthTarget(ctx context.Context, id string) (health.Target, error) {
	in, err := m.inst(id)
	if err != nil {
		return health.Target{}, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.target(id), nil
}

func (m *fakeManager) ListHealthTargets(ctx context.Context) ([]health.Target, error) {
	var out []health.Target
	for id, in := range m.all() {
		in.mu.Lock()
		if !in.check.IsZero() || in.hst.Status != health.Disabled {
			out = append(out, in.target(id))
		}
		in.mu.Unlock()
	}
	return out, nil
}

func (m *fakeManager) UpdateHealthStatus(ctx context.Context, id string, fn func(health.Target, *health.Status)) error {
	in, err := m.inst(id)
	if err != nil {
		return err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	st := in.hst
	fn(in.target(id), &st)
	in.hst = st
	return nil
}

// --- restart.Instances ---

func (m *fakeManager) RestartSnapshot(ctx context.Context, id string) (restart.Snapshot, error) {
	in, err := m.inst(id)
	if err != nil {
		return restart.Snapshot{}, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.snapshot(id), nil
}

func (m *fakeManager) ListRestartable(ctx context.Context) ([]restart.Snapshot, error) {
	var out []restart.Snapshot
	for id, in := range m.all() {
		in.mu.Lock()
		if !in.policy.IsZero() {
			out = append(out, in.snapshot(id))
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
	st := in.rst
	fn(in.snapshot(id), &st)
	in.rst = st
	return nil
}

func (m *fakeManager) StartForRestart(ctx context.Context, id string, check func(restart.Snapshot, *restart.Status) bool) error {
	in, err := m.inst(id)
	if err != nil {
		return err
	}
	in.op.Lock()
	defer in.op.Unlock()
	in.mu.Lock()
	st := in.rst
	okk := check(in.snapshot(id), &st)
	in.rst = st
	in.mu.Unlock()
	if okk {
		m.boot(id, in)
	}
	return nil
}

func (m *fakeManager) StopForRestart(ctx context.Context, id string, check func(restart.Snapshot, *restart.Status) bool) error {
	in, err := m.inst(id)
	if err != nil {
		return err
	}
	in.op.Lock()
	defer in.op.Unlock()
	in.mu.Lock()
	st := in.rst
	okk := check(in.snapshot(id), &st)
	in.rst = st
	if !okk {
		in.mu.Unlock()
		return nil
	}
	in.state, in.stoppedAt = state.Stopped, m.clock.Now()
	in.exit = restart.ExitInfo{StoppedByHypeman: true}
	in.mu.Unlock()
	m.publish(id, state.Running, state.Stopped, "health restart")
	return nil
}

// --- lifecycle helpers ---

func (m *fakeManager) publish(id string, from, to state.State, why string) {
	if _, err := m.bus.Publish(events.StateChange(id, from, to, why)); err != nil {
		panic(err)
	}
}

// add creates a Running instance with check c and policy p.
func (m *fakeManager) add(id string, c health.Check, p restart.Policy) {
	in := &fakeInst{state: state.Stopped, check: c, policy: p, hst: health.Initial(c)}
	m.mu.Lock()
	m.insts[id] = in
	m.mu.Unlock()
	in.op.Lock()
	m.boot(id, in)
	in.op.Unlock()
}

func (m *fakeManager) boot(id string, in *fakeInst) {
	in.mu.Lock()
	in.state, in.startedAt, in.stoppedAt, in.exit = state.Running, m.clock.Now(), time.Time{}, restart.ExitInfo{}
	in.mu.Unlock()
	m.publish(id, state.Stopped, state.Running, "started")
}

func (m *fakeManager) setState(id string, to state.State) {
	in, _ := m.inst(id)
	in.mu.Lock()
	from := in.state
	in.state = to
	if to == state.Stopped {
		in.stoppedAt = m.clock.Now()
	}
	in.mu.Unlock()
	m.publish(id, from, to, "test")
}

func (m *fakeManager) get(id string) fakeInst {
	in, _ := m.inst(id)
	in.mu.Lock()
	defer in.mu.Unlock()
	return fakeInst{state: in.state, check: in.check, hst: in.hst, startedAt: in.startedAt, stoppedAt: in.stoppedAt,
		policy: in.policy, rst: in.rst, exit: in.exit}
}

// fakeProber answers per instance with a settable behaviour.
type fakeProber struct {
	mu      sync.Mutex
	answer  map[string]func(ctx context.Context) (int, error) // status / exit code, err
	calls   map[string]int
	entered chan string // optional: told when a probe starts
}

func newProber() *fakeProber {
	return &fakeProber{answer: map[string]func(context.Context) (int, error){}, calls: map[string]int{}}
}

func (p *fakeProber) set(id string, fn func(ctx context.Context) (int, error)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.answer[id] = fn
}

func (p *fakeProber) status(id string, code int) {
	p.set(id, func(context.Context) (int, error) { return code, nil })
}

func (p *fakeProber) n(id string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[id]
}

func (p *fakeProber) call(ctx context.Context, id string) (int, error) {
	p.mu.Lock()
	p.calls[id]++
	fn, ch := p.answer[id], p.entered
	p.mu.Unlock()
	if ch != nil {
		ch <- id
	}
	if fn == nil {
		return 0, errors.New("no answer configured")
	}
	return fn(ctx)
}

func (p *fakeProber) HTTP(ctx context.Context, id string, port int, scheme, path string) (int, error) {
	if port == 0 || path == "" || (scheme != "http" && scheme != "https") {
		return 0, errors.New("bad http probe arguments")
	}
	return p.call(ctx, id)
}

func (p *fakeProber) TCP(ctx context.Context, id string, port int) error {
	_, err := p.call(ctx, id)
	return err
}

func (p *fakeProber) Exec(ctx context.Context, id string, cmd []string, _ string) (int, error) {
	if len(cmd) == 0 {
		return 0, errors.New("no command")
	}
	return p.call(ctx, id)
}

type restarterCall struct {
	id     string
	boot   time.Time
	detail string
}

type fakeRestarter struct {
	mu    sync.Mutex
	calls []restarterCall
}

func (r *fakeRestarter) HealthFailed(id string, boot time.Time, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, restarterCall{id, boot, detail})
}

func (r *fakeRestarter) get() []restarterCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]restarterCall(nil), r.calls...)
}

type fakeMetrics struct {
	mu sync.Mutex
	n  map[string]int
}

func (f *fakeMetrics) CheckResult(t health.Type, o health.Outcome, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == nil {
		f.n = map[string]int{}
	}
	f.n[string(t)+"/"+string(o)]++
}

func (f *fakeMetrics) get(k string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n[k]
}

type harness struct {
	clock     *eventstest.Clock
	bus       *events.Bus
	m         *fakeManager
	prober    *fakeProber
	restarter *fakeRestarter
	metrics   *fakeMetrics
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	clock := eventstest.NewClock(boot)
	bus := events.New(events.Options{Clock: clock})
	t.Cleanup(bus.Close)
	return &harness{clock: clock, bus: bus, m: &fakeManager{bus: bus, clock: clock, insts: map[string]*fakeInst{}},
		prober: newProber(), restarter: &fakeRestarter{}, metrics: &fakeMetrics{}}
}

// run starts a health controller; stop (also at cleanup) ends it.
func (h *harness) run(t *testing.T) (*health.Controller, func()) {
	t.Helper()
	c, err := health.New(health.Config{Instances: h.m, Prober: h.prober, Events: h.bus, Restarter: h.restarter,
		Clock: h.clock, Metrics: h.metrics})
	if err != nil {
		t.Fatal(err)
	}
	return c, start(t, c.Run)
}

func start(t *testing.T, run func(context.Context) error) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
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
	return stop
}

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

func settle() { time.Sleep(30 * time.Millisecond) }

// waitTimers waits until n fake timers are armed.
func (h *harness) waitTimers(t *testing.T, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.clock.WaitTimers(ctx, n); err != nil {
		t.Fatalf("waiting for %d timers (have %d): %v", n, h.clock.Timers(), err)
	}
}
