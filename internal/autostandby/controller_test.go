package autostandby

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/events/eventstest"
	"hypeman/internal/instances/state"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

const guest = "10.100.0.2"

// fakeObserver returns the connections set by the test; during is called
// (once) by the standby check, to model a connection arriving while paused.
type fakeObserver struct {
	mu    sync.Mutex
	conns []Conn
	err   error
	calls int
}

func (o *fakeObserver) set(cs ...Conn) {
	o.mu.Lock()
	o.conns = cs
	o.mu.Unlock()
}

func (o *fakeObserver) Connections(_ context.Context, guests map[netip.Addr]bool) ([]Conn, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls++
	if o.err != nil {
		return nil, o.err
	}
	var out []Conn
	for _, c := range o.conns {
		if guests[c.Dst] {
			out = append(out, c)
		}
	}
	return out, nil
}

func (o *fakeObserver) Mode() string { return "fake" }

// fakeInstances has one instance; StandbyIfIdle calls onPause (the moment
// the VM is paused), then the check, and records the outcome.
type fakeInstances struct {
	mu       sync.Mutex
	snap     Snapshot
	onPause  func()
	standbys int
	resumes  int
}

func (f *fakeInstances) AutoStandbySnapshot(_ context.Context, id string) (Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id != f.snap.ID {
		return Snapshot{}, errors.New("not found")
	}
	return f.snap, nil
}

func (f *fakeInstances) ListAutoStandby(context.Context) ([]Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return []Snapshot{f.snap}, nil
}

func (f *fakeInstances) StandbyIfIdle(ctx context.Context, id string, check func(context.Context) error) error {
	f.mu.Lock()
	if f.snap.State != state.Running {
		f.mu.Unlock()
		return errors.New("not running")
	}
	onPause := f.onPause
	f.mu.Unlock()
	if onPause != nil {
		onPause()
	}
	if err := check(ctx); err != nil {
		f.mu.Lock()
		f.resumes++
		f.mu.Unlock()
		return err
	}
	f.mu.Lock()
	f.standbys++
	f.snap.State = state.Standby
	f.mu.Unlock()
	return nil
}

func (f *fakeInstances) counts() (int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.standbys, f.resumes
}

type countMetrics struct {
	mu      sync.Mutex
	results map[string]int
	holds   int
}

func (m *countMetrics) AutoStandby(r string) {
	m.mu.Lock()
	m.results[r]++
	m.mu.Unlock()
}
func (m *countMetrics) AutoStandbyHold() { m.mu.Lock(); m.holds++; m.mu.Unlock() }

type env struct {
	c    *Controller
	clk  *eventstest.Clock
	obs  *fakeObserver
	inst *fakeInstances
	met  *countMetrics
	file string
}

func newEnv(t *testing.T, p Policy) *env {
	t.Helper()
	e := &env{
		clk: eventstest.NewClock(t0), obs: &fakeObserver{},
		inst: &fakeInstances{snap: Snapshot{ID: "i1", State: state.Running, Policy: p, GuestIP: guest}},
		met:  &countMetrics{results: map[string]int{}},
		file: filepath.Join(t.TempDir(), "holds.json"),
	}
	e.c = e.controller(t)
	return e
}

func (e *env) controller(t *testing.T) *Controller {
	t.Helper()
	bus := events.New(events.Options{})
	t.Cleanup(bus.Close)
	c, err := New(Config{Instances: e.inst, Observer: e.obs, Events: bus, Clock: e.clk, Metrics: e.met, HoldsFile: e.file})
	if err != nil {
		t.Fatal(err)
	}
	c.reconcile(context.Background())
	return c
}

// poll runs one observation and takes any due standby synchronously.
func (e *env) poll() []string {
	ctx := context.Background()
	due := e.c.poll(ctx)
	for _, id := range due {
		e.c.standby(ctx, id)
	}
	return due
}

func (e *env) status(t *testing.T) Status {
	t.Helper()
	s, err := e.inst.AutoStandbySnapshot(context.Background(), "i1")
	if err != nil {
		t.Fatal(err)
	}
	return e.c.Status(s)
}

func conn(src string, sport, dport uint16, active bool) Conn {
	return Conn{Src: netip.MustParseAddr(src), SrcPort: sport, Dst: netip.MustParseAddr(guest), DstPort: dport, Active: active}
}

func policy5s() Policy { return Policy{Enabled: true, IdleTimeout: "5s"} }

func TestCountdownAfterLastConnectionCloses(t *testing.T) {
	e := newEnv(t, policy5s())
	e.obs.set(conn("10.100.0.1", 40000, 80, true))
	e.poll()
	if st := e.status(t); st.Status != StatusActive || st.Reason != ReasonActiveInboundConnections || st.ActiveInboundConnections != 1 {
		t.Fatalf("with a connection: %+v", st)
	}
	// A slow request: the connection stays open far past idle_timeout.
	for range 20 {
		e.clk.Advance(time.Second)
		if due := e.poll(); len(due) != 0 {
			t.Fatalf("standby requested while a connection is open (at %s)", e.clk.Now().Sub(t0))
		}
	}
	// It closes (conntrack keeps it in TIME_WAIT): the countdown starts.
	e.obs.set(conn("10.100.0.1", 40000, 80, false))
	e.clk.Advance(time.Second)
	e.poll()
	st := e.status(t)
	if st.Status != StatusIdleCountdown || st.ActiveInboundConnections != 0 || st.IdleSince == nil || !st.IdleSince.Equal(e.clk.Now()) {
		t.Fatalf("after close: %+v", st)
	}
	if *st.CountdownRemaining != 5*time.Second || !st.NextStandbyAt.Equal(e.clk.Now().Add(5*time.Second)) {
		t.Fatalf("countdown: remaining %s next %s", *st.CountdownRemaining, st.NextStandbyAt)
	}
	for range 4 {
		e.clk.Advance(time.Second)
		if due := e.poll(); len(due) != 0 {
			t.Fatalf("standby before idle_timeout elapsed (%s idle)", e.clk.Now().Sub(*st.IdleSince))
		}
	}
	e.clk.Advance(time.Second)
	if due := e.poll(); len(due) != 1 {
		t.Fatalf("no standby after idle_timeout: due %v", due)
	}
	if n, _ := e.inst.counts(); n != 1 || e.met.results["ok"] != 1 {
		t.Fatalf("standbys %d metrics %v", n, e.met.results)
	}
}

func TestNewConnectionDuringCountdownResetsIt(t *testing.T) {
	e := newEnv(t, policy5s())
	e.poll() // idle from t0
	e.clk.Advance(4 * time.Second)
	// A short request opened and closed between two polls: only its
	// TIME_WAIT entry is seen; it still counts as activity.
	e.obs.set(conn("10.100.0.1", 40001, 80, false))
	e.poll()
	st := e.status(t)
	if st.IdleSince == nil || !st.IdleSince.Equal(e.clk.Now()) || st.LastInboundActivityAt == nil {
		t.Fatalf("countdown not reset by a short connection: %+v", st)
	}
	e.clk.Advance(4 * time.Second)
	if due := e.poll(); len(due) != 0 {
		t.Fatal("standby 8s after start although a connection came 4s ago")
	}
	e.clk.Advance(time.Second)
	if due := e.poll(); len(due) != 1 {
		t.Fatal("no standby 5s after the last connection")
	}
}

func TestIgnoreLists(t *testing.T) {
	e := newEnv(t, Policy{Enabled: true, IdleTimeout: "2s", IgnoreSourceCIDRs: []string{"192.168.0.0/16"}, IgnoreDestinationPorts: []int{22}})
	e.obs.set(conn("192.168.3.4", 40000, 80, true), conn("10.100.0.1", 40001, 22, true))
	e.poll()
	if st := e.status(t); st.ActiveInboundConnections != 0 || st.Status != StatusIdleCountdown {
		t.Fatalf("ignored connections kept it awake: %+v", st)
	}
	e.clk.Advance(2 * time.Second)
	if due := e.poll(); len(due) != 1 {
		t.Fatal("ignored connections blocked the standby")
	}
	// The same traffic without the ignore lists keeps it awake.
	e2 := newEnv(t, Policy{Enabled: true, IdleTimeout: "2s"})
	e2.obs.set(conn("192.168.3.4", 40000, 80, true), conn("10.100.0.1", 40001, 22, true))
	e2.poll()
	e2.clk.Advance(10 * time.Second)
	if due := e2.poll(); len(due) != 0 || e2.status(t).ActiveInboundConnections != 2 {
		t.Fatal("qualifying connections did not keep it awake")
	}
}

func TestHoldBlocksStandbyAndSurvivesRestart(t *testing.T) {
	e := newEnv(t, policy5s())
	e.poll()
	until, err := e.c.Hold("i1", e.clk.Now().Add(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// A daemon restart: a new controller reads the hold back.
	e.c = e.controller(t)
	e.poll()
	st := e.status(t)
	if st.HoldUntil == nil || !st.HoldUntil.Equal(until) || !st.NextStandbyAt.Equal(until) {
		t.Fatalf("hold not in effect after restart: %+v", st)
	}
	e.clk.Advance(29 * time.Second)
	if due := e.poll(); len(due) != 0 {
		t.Fatal("standby during a hold")
	}
	e.clk.Advance(time.Second)
	if due := e.poll(); len(due) != 1 {
		t.Fatal("no standby when the hold ended")
	}
	if e.met.holds != 1 {
		t.Fatalf("hold metric %d", e.met.holds)
	}
	// An earlier hold does not shorten a later one.
	if got, _ := e.c.Hold("i1", t0); !got.Equal(until) {
		t.Fatalf("earlier hold replaced the later one: %s", got)
	}
}

func TestConnectionWhilePausedResumesInsteadOfSaving(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Conn
	}{
		{"active connection", conn("10.100.0.1", 40005, 80, true)},
		{"SYN to the paused guest", conn("10.100.0.1", 40006, 80, true)},
		{"connection already closed again", conn("10.100.0.1", 40007, 80, false)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, policy5s())
			e.poll()
			e.inst.onPause = func() { e.obs.set(tc.c) }
			e.clk.Advance(5 * time.Second)
			if due := e.poll(); len(due) != 1 {
				t.Fatal("standby not attempted")
			}
			standbys, resumes := e.inst.counts()
			if standbys != 0 || resumes != 1 || e.met.results["busy"] != 1 {
				t.Fatalf("standbys %d resumes %d metrics %v", standbys, resumes, e.met.results)
			}
			st := e.status(t)
			if st.Status != StatusActive || st.LastInboundActivityAt == nil {
				t.Fatalf("after the busy standby: %+v", st)
			}
			// The countdown starts over from the next poll.
			e.inst.onPause = nil
			e.obs.set()
			e.clk.Advance(time.Second)
			e.poll()
			e.clk.Advance(4 * time.Second)
			if due := e.poll(); len(due) != 0 {
				t.Fatal("standby before a full new countdown")
			}
			e.clk.Advance(time.Second)
			if due := e.poll(); len(due) != 1 {
				t.Fatal("no standby after the new countdown")
			}
		})
	}
}

func TestObserverErrorStopsCountdown(t *testing.T) {
	e := newEnv(t, policy5s())
	e.obs.err = errors.New("netlink: permission denied")
	for range 10 {
		e.clk.Advance(time.Second)
		if due := e.poll(); len(due) != 0 {
			t.Fatal("standby with a failing observer")
		}
	}
	if st := e.status(t); st.Status != StatusError || st.Reason != ReasonObserverError {
		t.Fatalf("status %+v", st)
	}
}

func TestStatusNotEligible(t *testing.T) {
	e := newEnv(t, policy5s())
	cases := []struct {
		snap   Snapshot
		status StatusCode
		reason Reason
	}{
		{Snapshot{ID: "x", State: state.Running, GuestIP: guest}, StatusDisabled, ReasonPolicyMissing},
		{Snapshot{ID: "x", State: state.Running, GuestIP: guest, Policy: Policy{IdleTimeout: "1m"}}, StatusDisabled, ReasonPolicyDisabled},
		{Snapshot{ID: "x", State: state.Running, NetworkDisabled: true, Policy: policy5s()}, StatusIneligible, ReasonNetworkDisabled},
		{Snapshot{ID: "x", State: state.Stopped, Policy: policy5s()}, StatusIneligible, ReasonInstanceNotRunning},
		{Snapshot{ID: "x", State: state.Running, Policy: policy5s()}, StatusIneligible, ReasonMissingIP},
	}
	for _, tc := range cases {
		st := e.c.Status(tc.snap)
		if st.Status != tc.status || st.Reason != tc.reason || st.Eligible || !st.Supported || st.TrackingMode != "fake" {
			t.Errorf("%+v: got %s/%s eligible=%v", tc.snap, st.Status, st.Reason, st.Eligible)
		}
	}
}

// runController starts Run on a controller over inst with a fake clock and
// returns once Run's first reconcile is done; the test's end stops it.
func runController(t *testing.T, inst *fakeInstances, cfg Config) (*Controller, *events.Bus, *eventstest.Clock) {
	t.Helper()
	clk := eventstest.NewClock(t0)
	bus := events.New(events.Options{})
	t.Cleanup(bus.Close)
	cfg.Instances, cfg.Observer, cfg.Events, cfg.Clock = inst, &fakeObserver{}, bus, clk
	cfg.PollInterval = time.Second
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := clk.WaitTimers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	return c, bus, clk
}

// waitStandby advances the fake clock while Run polls until inst was put on
// standby once (bounded by a real-time deadline).
func waitStandby(t *testing.T, clk *eventstest.Clock, inst *fakeInstances, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if n, _ := inst.counts(); n == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance never put on standby %s", what)
		}
		if clk.Timers() > 0 {
			clk.Advance(time.Second)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRunFollowsEvents(t *testing.T) {
	inst := &fakeInstances{snap: Snapshot{ID: "i1", State: state.Stopped, Policy: Policy{Enabled: true, IdleTimeout: "2s"}, GuestIP: guest}}
	_, bus, clk := runController(t, inst, Config{})
	// Stopped: never observed, however long.
	clk.Advance(time.Second)
	if err := clk.WaitTimers(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	// It starts: the event makes the controller track it.
	inst.mu.Lock()
	inst.snap.State = state.Running
	inst.mu.Unlock()
	if _, err := bus.Publish(events.StateChange("i1", state.Stopped, state.Running, "start")); err != nil {
		t.Fatal(err)
	}
	waitStandby(t, clk, inst, "by Run")
}

// Refresh makes Run re-read an instance at once: a policy set after the
// start (no lifecycle event, reconcile far away) still leads to a standby.
func TestRunRefreshRereadsPolicy(t *testing.T) {
	inst := &fakeInstances{snap: Snapshot{ID: "i1", State: state.Running, GuestIP: guest}} // no policy yet
	c, _, clk := runController(t, inst, Config{ReconcileInterval: 24 * time.Hour})
	inst.mu.Lock()
	inst.snap.Policy = Policy{Enabled: true, IdleTimeout: "2s"}
	inst.mu.Unlock()
	c.Refresh("i1")
	waitStandby(t, clk, inst, "after Refresh")
}

func TestPolicyValidate(t *testing.T) {
	for _, tc := range []struct {
		p     Policy
		field string
	}{
		{Policy{Enabled: true, IdleTimeout: "5x"}, "auto_standby.idle_timeout"},
		{Policy{Enabled: true, IdleTimeout: "500ms"}, "auto_standby.idle_timeout"},
		{Policy{IgnoreSourceCIDRs: []string{"10.0.0.0/8", "nope"}}, "auto_standby.ignore_source_cidrs[1]"},
		{Policy{IgnoreDestinationPorts: []int{0}}, "auto_standby.ignore_destination_ports[0]"},
	} {
		var fe *FieldError
		if err := tc.p.Validate(); !errors.As(err, &fe) || fe.Field != tc.field || !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v", tc.p, err)
		}
	}
	if err := (Policy{Enabled: true, IdleTimeout: "1s", IgnoreSourceCIDRs: []string{"10.0.0.0/8"}, IgnoreDestinationPorts: []int{22}}).Validate(); err != nil {
		t.Fatal(err)
	}
	if (Policy{Enabled: true}).Timeout() != DefaultIdleTimeout {
		t.Fatal("default idle timeout")
	}
}

// The pause publishes a state change that the controller may handle before
// the re-check: a connection that closed before the countdown (still in
// TIME_WAIT) must not then look new and block the standby forever.
func TestPauseEventKeepsBaselineForRecheck(t *testing.T) {
	e := newEnv(t, policy5s())
	e.obs.set(conn("10.100.0.1", 40000, 80, false)) // closed earlier, lingering
	e.poll()
	e.inst.onPause = func() {
		s := e.inst.snap
		s.State = state.Paused
		e.c.setSnapshot(s)
	}
	e.clk.Advance(5 * time.Second)
	if due := e.poll(); len(due) != 1 {
		t.Fatal("standby not attempted")
	}
	if standbys, resumes := e.inst.counts(); standbys != 1 || resumes != 0 {
		t.Fatalf("standbys %d resumes %d: the lingering entry blocked the standby", standbys, resumes)
	}
}
