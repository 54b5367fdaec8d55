package events_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/events/eventstest"
	"hypeman/internal/instances/state"
)

const inst = "inst-1"

type outcome struct {
	res events.WaitResult
	err error
}

// rig is one bus + fake clock + fake state source.
type rig struct {
	t   *testing.T
	bus *events.Bus
	clk *eventstest.Clock
	src *source
	log *logBuf
}

func newRig(t *testing.T, initial state.State) *rig {
	t.Helper()
	r := &rig{
		t:   t,
		bus: events.New(events.Options{}),
		clk: eventstest.NewClock(time.Unix(1_700_000_000, 0)),
		src: newSource(initial),
		log: &logBuf{},
	}
	t.Cleanup(r.bus.Close)
	return r
}

func (r *rig) params(targets ...state.State) events.WaitParams {
	return events.WaitParams{
		Bus:        r.bus,
		InstanceID: inst,
		Targets:    targets,
		Get:        r.src.Get,
		NotFound:   errNotFound,
		Clock:      r.clk,
		Logger:     r.log.logger(),
	}
}

// start runs Wait in a goroutine and returns once it is blocked in its
// select (its timeout and poll timers exist).
func (r *rig) start(ctx context.Context, p events.WaitParams) <-chan outcome {
	r.t.Helper()
	before := r.clk.Timers()
	ch := make(chan outcome, 1)
	go func() {
		res, err := events.Wait(ctx, p)
		ch <- outcome{res, err}
	}()
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.clk.WaitTimers(wctx, before+2); err != nil {
		r.t.Fatalf("waiter never started waiting: %v", err)
	}
	return ch
}

// transition changes the source's state and publishes the event, in the
// order the manager does (persist, then publish).
func (r *rig) transition(to state.State, serr *string) {
	from, _, _ := r.src.Get(context.Background())
	r.src.set(to, serr)
	publish(r.t, r.bus, events.StateChange(inst, from, to, "test"))
}

func await(t *testing.T, ch <-chan outcome) outcome {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return")
		return outcome{}
	}
}

func assertPending(t *testing.T, ch <-chan outcome) {
	t.Helper()
	select {
	case o := <-ch:
		t.Fatalf("Wait returned early: %+v %v", o.res, o.err)
	default:
	}
}

func (r *rig) assertNoSubscribers() {
	r.t.Helper()
	if n := r.bus.Subscribers(inst); n != 0 {
		r.t.Fatalf("%d subscriptions left after Wait returned", n)
	}
}

// The change lands between the waiter's first read and its select: only a
// subscription taken before the read delivers it (the fake clock never
// advances, so neither poll nor timeout can rescue a lost event).
func TestWaitSubscribesBeforeFirstRead(t *testing.T) {
	r := newRig(t, state.Initializing)
	g := r.src.hold(true)
	ch := make(chan outcome, 1)
	go func() {
		res, err := events.Wait(context.Background(), r.params(state.Running))
		ch <- outcome{res, err}
	}()
	<-g.entered // Get has read Initializing and not returned yet
	r.transition(state.Running, nil)
	close(g.release)
	if o := await(t, ch); o.err != nil || o.res.Reached != state.Running {
		t.Fatalf("got %+v, %v", o.res, o.err)
	}
}

func TestWaitAlreadyInTarget(t *testing.T) {
	r := newRig(t, state.Running)
	res, err := events.Wait(context.Background(), r.params(state.Running))
	if err != nil || res.State != state.Running || res.Reached != state.Running || res.TimedOut {
		t.Fatalf("got %+v, %v", res, err)
	}
	if r.clk.Timers() != 0 {
		t.Fatal("timers left behind")
	}
	r.assertNoSubscribers()
}

func TestWaitTerminalStatesReturnEarly(t *testing.T) {
	for _, term := range []state.State{state.Stopped, state.Standby, state.Shutdown, state.Paused, state.Unknown} {
		t.Run(string(term)+"/at-start", func(t *testing.T) {
			r := newRig(t, term)
			res, err := events.Wait(context.Background(), r.params(state.Running))
			if err != nil || res.State != term || res.TimedOut || res.Reached != "" {
				t.Fatalf("got %+v, %v", res, err)
			}
		})
		t.Run(string(term)+"/during-wait", func(t *testing.T) {
			r := newRig(t, state.Initializing)
			ch := r.start(context.Background(), r.params(state.Running))
			r.transition(term, ptr("exit code 3"))
			o := await(t, ch)
			if o.err != nil || o.res.State != term || o.res.TimedOut || o.res.Reached != "" {
				t.Fatalf("got %+v, %v", o.res, o.err)
			}
			if o.res.StateError == nil || *o.res.StateError != "exit code 3" {
				t.Fatalf("state error not reported: %v", o.res.StateError)
			}
			r.assertNoSubscribers()
		})
	}
}

func TestWaitRestartPendingKeepsWaiting(t *testing.T) {
	r := newRig(t, state.Running)
	var mu sync.Mutex
	pending := true
	asked := make(chan struct{}, 10)
	p := r.params(state.Running)
	p.Targets = []state.State{state.Running}
	r.src.set(state.Initializing, nil)
	p.RestartPending = func() bool {
		mu.Lock()
		defer mu.Unlock()
		asked <- struct{}{}
		return pending
	}
	ch := r.start(context.Background(), p)

	r.transition(state.Stopped, ptr("exit code 1"))
	<-asked // the waiter saw Stopped and asked the restart policy
	assertPending(t, ch)
	r.transition(state.Initializing, nil)
	assertPending(t, ch)
	r.transition(state.Running, nil)
	o := await(t, ch)
	if o.err != nil || o.res.State != state.Running || o.res.Reached != state.Running || o.res.TimedOut {
		t.Fatalf("got %+v, %v", o.res, o.err)
	}

	// The policy gives up while we wait: the next poll notices and returns.
	r.src.set(state.Initializing, nil)
	ch = r.start(context.Background(), p)
	r.transition(state.Stopped, ptr("exit code 1"))
	<-asked
	assertPending(t, ch)
	mu.Lock()
	pending = false
	mu.Unlock()
	r.clk.Advance(events.DefaultPollInterval)
	o = await(t, ch)
	if o.err != nil || o.res.State != state.Stopped || o.res.Reached != "" || o.res.TimedOut {
		t.Fatalf("after restart given up: %+v, %v", o.res, o.err)
	}
}

func TestWaitTerminalEventButAlreadyRestarting(t *testing.T) {
	// The Stopped event arrives, but by the time the waiter reads the state a
	// restart has begun: it keeps waiting rather than report a stale Stopped.
	r := newRig(t, state.Initializing)
	ch := r.start(context.Background(), r.params(state.Running))
	publish(t, r.bus, events.StateChange(inst, state.Running, state.Stopped, "exited")) // source stays Initializing
	publish(t, r.bus, events.StateChange(inst, state.Stopped, state.Initializing, "restart"))
	r.transition(state.Running, nil)
	o := await(t, ch)
	if o.err != nil || o.res.Reached != state.Running {
		t.Fatalf("got %+v, %v", o.res, o.err)
	}
}

func TestParseWaitTimeout(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"": 60 * time.Second, "30s": 30 * time.Second, "2m": 2 * time.Minute,
		"5m": 5 * time.Minute, "1h": 5 * time.Minute, "5m1s": 5 * time.Minute, "1ms": time.Millisecond,
	} {
		got, err := events.ParseWaitTimeout(in)
		if err != nil || got != want {
			t.Errorf("ParseWaitTimeout(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"abc", "30", "-1s", "0", "0s", "-5m", "1x"} {
		if got, err := events.ParseWaitTimeout(in); !errors.Is(err, events.ErrInvalidTimeout) {
			t.Errorf("ParseWaitTimeout(%q) = %v, %v; want ErrInvalidTimeout", in, got, err)
		}
	}
	r := newRig(t, state.Initializing)
	p := r.params(state.Running)
	p.Timeout = -time.Second
	if _, err := events.Wait(context.Background(), p); !errors.Is(err, events.ErrInvalidTimeout) {
		t.Fatalf("Wait with negative timeout: %v", err)
	}
	if r.src.reads.Load() != 0 {
		t.Fatal("Wait read state despite invalid input")
	}
}

func TestParseWaitTargets(t *testing.T) {
	got, err := events.ParseWaitTargets([]string{"Running", "Stopped", "Running"})
	if err != nil || len(got) != 2 || got[0] != state.Running || got[1] != state.Stopped {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, in := range [][]string{nil, {}, {"running"}, {"Unknown"}, {"Running", "Bogus"}, {""}} {
		if _, err := events.ParseWaitTargets(in); !errors.Is(err, events.ErrInvalidState) {
			t.Errorf("ParseWaitTargets(%q): %v, want ErrInvalidState", in, err)
		}
	}
	r := newRig(t, state.Running)
	for _, targets := range [][]state.State{nil, {state.Unknown}, {"running"}} {
		if _, err := events.Wait(context.Background(), r.params(targets...)); !errors.Is(err, events.ErrInvalidState) {
			t.Errorf("Wait(%v): %v, want ErrInvalidState", targets, err)
		}
	}
}

// timeoutCase checks that a wait with timeout `set` times out exactly after
// `effective` of (fake) time.
func timeoutCase(t *testing.T, set, effective time.Duration) {
	r := newRig(t, state.Initializing)
	p := r.params(state.Running)
	p.Timeout = set
	p.PollInterval = time.Hour // keep the poll out of the way
	ch := r.start(context.Background(), p)
	r.clk.Advance(effective - time.Second)
	if r.clk.Timers() != 2 {
		t.Fatalf("a timer fired before %v", effective)
	}
	assertPending(t, ch)
	r.clk.Advance(time.Second)
	o := await(t, ch)
	if o.err != nil || !o.res.TimedOut || o.res.State != state.Initializing || o.res.Reached != "" {
		t.Fatalf("got %+v, %v", o.res, o.err)
	}
	r.assertNoSubscribers()
}

func TestWaitTimeoutCappedAt5m(t *testing.T) { timeoutCase(t, time.Hour, 5*time.Minute) }
func TestWaitDefaultTimeout60s(t *testing.T) { timeoutCase(t, 0, 60*time.Second) }
func TestWaitExplicitTimeout(t *testing.T)   { timeoutCase(t, 30*time.Second, 30*time.Second) }

func TestWaitTimeoutButStateMatchesAtReread(t *testing.T) {
	r := newRig(t, state.Initializing)
	p := r.params(state.Running)
	p.Timeout = 10 * time.Second
	p.PollInterval = time.Hour
	ch := r.start(context.Background(), p)
	r.src.set(state.Running, nil) // changed, but the event was lost
	r.clk.Advance(10 * time.Second)
	o := await(t, ch)
	if o.err != nil || o.res.TimedOut || o.res.State != state.Running || o.res.Reached != state.Running {
		t.Fatalf("got %+v, %v", o.res, o.err)
	}
}

func TestWaitDeleted(t *testing.T) {
	t.Run("event", func(t *testing.T) {
		r := newRig(t, state.Initializing)
		ch := r.start(context.Background(), r.params(state.Running))
		r.src.delete()
		publish(t, r.bus, events.Deleted(inst, state.Initializing, "deleted"))
		o := await(t, ch)
		var de *events.DeletedError
		if !errors.As(o.err, &de) || !errors.Is(o.err, events.ErrInstanceDeleted) || !errors.Is(o.err, errNotFound) {
			t.Fatalf("err = %v, want DeletedError matching ErrInstanceDeleted and the caller's not-found", o.err)
		}
		r.assertNoSubscribers()
	})
	t.Run("poll", func(t *testing.T) {
		r := newRig(t, state.Initializing)
		ch := r.start(context.Background(), r.params(state.Running))
		r.src.delete()
		r.clk.Advance(events.DefaultPollInterval)
		if o := await(t, ch); !errors.Is(o.err, errNotFound) {
			t.Fatalf("err = %v, want not found", o.err)
		}
	})
	t.Run("before", func(t *testing.T) {
		r := newRig(t, state.Running)
		r.src.delete()
		if _, err := events.Wait(context.Background(), r.params(state.Running)); !errors.Is(err, errNotFound) {
			t.Fatalf("err = %v, want not found", err)
		}
		r.assertNoSubscribers()
	})
}

func TestWaitContextCancel(t *testing.T) {
	r := newRig(t, state.Initializing)
	ctx, cancel := context.WithCancel(context.Background())
	ch := r.start(ctx, r.params(state.Running))
	cancel()
	o := await(t, ch)
	if !errors.Is(o.err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", o.err)
	}
	r.assertNoSubscribers()
	if r.clk.Timers() != 0 {
		t.Fatalf("%d timers not stopped", r.clk.Timers())
	}
}

func TestWaitAnyOf(t *testing.T) {
	r := newRig(t, state.Created)
	p := r.params(state.Running, state.Stopped)
	ch := r.start(context.Background(), p)
	r.transition(state.Initializing, nil)
	r.transition(state.Stopped, ptr("exit code 0"))
	o := await(t, ch)
	if o.err != nil || o.res.Reached != state.Stopped || o.res.State != state.Stopped || *o.res.StateError != "exit code 0" {
		t.Fatalf("got %+v, %v", o.res, o.err)
	}
	// Paused is normally terminal, but here it is a target.
	r.src.set(state.Running, nil)
	ch = r.start(context.Background(), r.params(state.Paused, state.Standby))
	r.transition(state.Paused, nil)
	if o = await(t, ch); o.err != nil || o.res.Reached != state.Paused {
		t.Fatalf("got %+v, %v", o.res, o.err)
	}
}

func TestWaitBriefTargetStillCounts(t *testing.T) {
	r := newRig(t, state.Initializing)
	ch := r.start(context.Background(), r.params(state.Running))
	// Running then Stopped before the waiter runs: the source already says
	// Stopped, but the waiter must report that Running was reached.
	r.src.set(state.Stopped, ptr("exit code 0"))
	publish(t, r.bus, events.StateChange(inst, state.Initializing, state.Running, ""))
	publish(t, r.bus, events.StateChange(inst, state.Running, state.Stopped, ""))
	o := await(t, ch)
	if o.err != nil || o.res.Reached != state.Running || o.res.State != state.Running || o.res.StateError != nil {
		t.Fatalf("got %+v, %v", o.res, o.err)
	}
}

func TestWaitPollingFallbackWarns(t *testing.T) {
	r := newRig(t, state.Initializing)
	ch := r.start(context.Background(), r.params(state.Running))
	r.clk.Advance(events.DefaultPollInterval) // a poll with no change: keeps waiting, no warning
	if err := r.clk.WaitTimers(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	assertPending(t, ch)
	if strings.Contains(r.log.String(), "did not deliver") {
		t.Fatal("warned without a missed change")
	}
	r.src.set(state.Running, nil) // no event
	r.clk.Advance(events.DefaultPollInterval)
	o := await(t, ch)
	if o.err != nil || o.res.Reached != state.Running {
		t.Fatalf("got %+v, %v", o.res, o.err)
	}
	if !strings.Contains(r.log.String(), "level=WARN msg=\"wait: polling saw a state change the event bus did not deliver\"") {
		t.Fatalf("no warning logged:\n%s", r.log.String())
	}
}

func TestWaitDoesNotWarnWhenEventRacesThePoll(t *testing.T) {
	r := newRig(t, state.Initializing)
	ch := r.start(context.Background(), r.params(state.Running))
	g := r.src.hold(false)
	r.clk.Advance(events.DefaultPollInterval)
	<-g.entered // the poll is reading the state...
	// ...when a change lands and is published.
	r.transition(state.Created, nil) // non-terminal: keep waiting
	close(g.release)
	if err := r.clk.WaitTimers(context.Background(), 2); err != nil {
		t.Fatal(err) // the next poll timer exists: the poll finished
	}
	assertPending(t, ch)
	r.transition(state.Running, nil)
	if o := await(t, ch); o.res.Reached != state.Running {
		t.Fatalf("got %+v, %v", o.res, o.err)
	}
	if strings.Contains(r.log.String(), "did not deliver") {
		t.Fatalf("spurious warning:\n%s", r.log.String())
	}
}

func TestWaitRecoversFromLagViaHistory(t *testing.T) {
	m := &counters{}
	r := newRig(t, state.Initializing)
	r.bus = events.New(events.Options{Metrics: m})
	t.Cleanup(r.bus.Close)
	p := r.params(state.Running)
	release := make(chan struct{})
	entered := make(chan struct{})
	p.RestartPending = func() bool { close(entered); <-release; return true }
	ch := r.start(context.Background(), p)

	r.transition(state.Stopped, nil)
	<-entered // the waiter is stuck in the restart predicate, not reading events
	for range 40 {
		publish(t, r.bus, events.StateChange(inst, state.Initializing, state.Created, "flap"))
	}
	r.transition(state.Running, nil)
	if _, drop := m.get("wait", events.DropBufferFull); drop != 1 {
		t.Fatalf("dropped counter = %d, want 1 (the waiter lagged)", drop)
	}
	close(release)
	o := await(t, ch)
	if o.err != nil || o.res.Reached != state.Running {
		t.Fatalf("got %+v, %v", o.res, o.err)
	}
	r.assertNoSubscribers()
}

func TestWaitBusClosedFallsBackToPolling(t *testing.T) {
	r := newRig(t, state.Initializing)
	ch := r.start(context.Background(), r.params(state.Running))
	r.bus.Close()
	r.src.set(state.Running, nil)
	r.clk.Advance(events.DefaultPollInterval)
	if o := await(t, ch); o.err != nil || o.res.Reached != state.Running {
		t.Fatalf("got %+v, %v", o.res, o.err)
	}
}

func TestThousandWaitersReleasedByOneEvent(t *testing.T) {
	r := newRig(t, state.Initializing)
	const n = 1000
	results := make(chan outcome, n)
	for range n {
		go func() {
			res, err := events.Wait(context.Background(), r.params(state.Running))
			results <- outcome{res, err}
		}()
	}
	eventually(t, "1000 waiters subscribed", func() bool { return r.bus.Subscribers(inst) == n })
	reads := r.src.reads.Load()
	r.transition(state.Running, nil)
	timeout := time.After(20 * time.Second)
	for i := 0; i < n; i++ {
		select {
		case o := <-results:
			if o.err != nil || o.res.Reached != state.Running || o.res.TimedOut {
				t.Fatalf("waiter %d: %+v, %v", i, o.res, o.err)
			}
		case <-timeout:
			t.Fatalf("only %d of %d waiters released", i, n)
		}
	}
	r.assertNoSubscribers()
	if extra := r.src.reads.Load() - reads; extra > 2*n {
		t.Fatalf("%d state reads for %d waiters", extra, n)
	}
}
